import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from models.checkpoint import load_model, read_checkpoint  # noqa: E402
from tests.conftest import mini_data_config  # noqa: E402
from training.config import PRESETS, load_backbone_config, merge  # noqa: E402
from training.train_backbone import (  # noqa: E402
    fitted_samples,
    logged_samples,
    train_backbone,
)

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT.parent / "shared" / "data" / "coco-val-mini"
pytestmark = pytest.mark.skipif(
    not (MINI / "person_keypoints.json").exists(), reason="no ../shared/data/coco-val-mini"
)


def _tiny(**over) -> dict:
    """cpu-small on the 53 real persons of coco-val-mini, at 64x32 so it runs in seconds."""
    base = {
        "input_hw": [64, 32],
        "sigma": 1.0,
        "data": mini_data_config(),
        "augment": {
            "scale_factor": 0.0,
            "rotation_prob": 0.0,
            "flip_prob": 0.0,
            "half_body_prob": 0.0,
        },
        "batch_size": 16,
        "workers": 0,
        "lr": 3e-3,
        "lr_steps": [100],
    }
    base.update(over)
    return base


def test_loss_decreases_on_a_tiny_overfit_set(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = merge(PRESETS["cpu-small"], _tiny(epochs=8, val_every=8))
    metrics = train_backbone(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 8
    first, last = log[0]["train_loss"], log[-1]["train_loss"]
    assert last < 0.8 * first, (first, last)
    assert metrics["val_loss"] > 0
    assert 0 <= metrics["val_acc"] <= 1
    assert -1 <= metrics["val_lr_corr"] <= 1  # the most alike left/right pair's heatmaps
    assert metrics["val_lr_corr_pair"] in {"eye", "ear", "shoulder", "elbow", "wrist", "hip",
                                           "knee", "ankle"}  # fmt: skip
    model = load_model(tmp_path / "run" / "final.pt")  # rebuilt from the file alone
    assert model.config.input_hw == (64, 32)
    assert read_checkpoint(tmp_path / "run" / "best.pt").meta["metrics"]["epoch"] == 8


def test_resume_continues_from_the_last_epoch(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    train_backbone(merge(PRESETS["cpu-small"], _tiny(epochs=1)), run)
    metrics = train_backbone(merge(PRESETS["cpu-small"], _tiny(epochs=2)), run, resume=True)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in log] == [1, 2]
    assert metrics["epoch"] == 2
    assert not list(run.glob(".*.tmp"))  # atomic saves leave nothing half-written


def test_config_file_over_a_preset(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('preset = "hrnet-w32-coco"\nepochs = 3\n[data]\nroot = "/data/coco"\n')
    cfg = load_backbone_config(config_file=f)
    assert (cfg.arch, cfg.epochs, cfg.data.root) == ("hrnet_w32", 3, "/data/coco")
    assert cfg.data.train_ann == PRESETS["hrnet-w32-coco"].data.train_ann
    f.write_text("epoch = 3\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_backbone_config(config_file=f)
    with pytest.raises(ValueError, match="unknown preset"):
        load_backbone_config(preset="nope")


def test_paper_presets_use_the_paper_schedule() -> None:
    for name in ("hrnet-w32-coco", "hrnet-w48-coco", "resnet152-coco", "hrnet-w32-crowdpose"):
        c = PRESETS[name]
        assert (c.epochs, c.lr, c.lr_steps) == (210, 1e-3, (170, 200))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path) -> None:
    cfg_file = tmp_path / "ddp.toml"
    t = _tiny(epochs=1, batch_size=8)
    lines = [
        'preset = "cpu-small"',
        "input_hw = [64, 32]",
        "sigma = 1.0",
        "batch_size = 8",
        "workers = 0",
        "epochs = 1",
        "lr_steps = [100]",
        "[data]",
    ]
    lines += [f'{k} = "{v}"' for k, v in t["data"].items() if v is not None]
    lines += ["synthetic = false"]
    cfg_file.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "service.cli",
        "--log-level",
        "WARNING",
        "train",
        "backbone",
        "--config",
        str(cfg_file),
        "--out",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_checkpoint(tmp_path / "run" / "final.pt").meta
    assert meta["world_size"] == 2
    assert meta["metrics"]["ddp_consistent"] is True


def test_stream_sampler_passes_are_permutations_and_resume_exactly() -> None:
    from itertools import islice

    from training.train_backbone import StreamSampler

    s = StreamSampler(n=10, batch=3, seed=5)  # 3 steps per pass, one person dropped each pass
    keys = list(islice(iter(s), 18))  # two passes
    for e in (0, 1):
        people = [i for ep, i in keys if ep == e]
        assert len(people) == 9
        assert len(set(people)) == 9
    assert [i for _, i in keys[:9]] != [i for _, i in keys[9:]]  # a new order each pass
    later = StreamSampler(n=10, batch=3, seed=5, start_step=4)
    assert list(islice(iter(later), 6)) == keys[12:18]
    ranks = [list(islice(iter(StreamSampler(10, 2, 5, r, 2)), 4)) for r in (0, 1)]
    assert set(ranks[0]).isdisjoint(ranks[1])  # processes split each step


def test_time_budget_sittings_equal_one_run(tmp_path: Path) -> None:
    """Stopped by the budget after every step and resumed, a run ends with exactly the weights,
    optimizer state and schedule of one uninterrupted run (same data, augmentation, RNG)."""
    torch.set_num_threads(1)
    over = _tiny(
        train_samples=64,
        report_every=32,
        lr_drops=[0.5],
        warmup_samples=16,
        augment={"scale_factor": 0.3, "rotation_prob": 0.6, "flip_prob": 0.5},
    )
    cfg = merge(PRESETS["cpu-small"], over)
    whole = train_backbone(cfg, tmp_path / "whole")
    sittings = 0
    while True:
        m = train_backbone(cfg, tmp_path / "parts", resume=True, time_budget_s=1e-9)
        sittings += 1
        if m.get("stopped") != "time_budget":
            break
    assert sittings == 4  # 4 steps of 16, one per sitting
    assert not (tmp_path / "parts" / "final.pt").exists() or m["samples"] == 64
    a = read_checkpoint(tmp_path / "whole" / "final.pt")
    b = read_checkpoint(tmp_path / "parts" / "final.pt")
    assert a.meta["samples"] == b.meta["samples"] == 64
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    assert whole["lr"] == m["lr"] == pytest.approx(3e-3 * 0.1)
    sa = torch.load(tmp_path / "whole" / "train_state.pt", weights_only=False)
    sb = torch.load(tmp_path / "parts" / "train_state.pt", weights_only=False)
    assert sa["scheduler"] == sb["scheduler"]
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])
    rows = [json.loads(x) for x in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    assert [r["samples"] for r in rows] == [16, 32, 48, 64]
    assert [r.get("stopped") for r in rows] == ["time_budget"] * 3 + [None]
    assert "val_AP" in rows[1]  # held-out AP at each report: the learning curve


def test_channels_last_trains_as_the_contiguous_layout(tmp_path: Path) -> None:
    """`channels_last` changes only the memory layout (oneDNN's fast path): the same first loss
    to float rounding (the same arithmetic in another summation order; Adam's later steps then
    drift apart by a fraction of a percent), and a checkpoint that loads and runs like any
    other."""
    torch.set_num_threads(1)
    over = _tiny(train_samples=48, report_every=16, warmup_samples=0)
    logs = {}
    for layout in (False, True):
        cfg = merge(PRESETS["cpu-small"], {**over, "channels_last": layout})
        train_backbone(cfg, tmp_path / str(layout))
        rows = (tmp_path / str(layout) / "log.jsonl").read_text().splitlines()
        logs[layout] = [json.loads(x)["train_loss"] for x in rows]
    assert logs[True][0] == pytest.approx(logs[False][0], rel=1e-5)
    assert logs[True] == pytest.approx(logs[False], rel=2e-2)
    model = load_model(tmp_path / "True" / "final.pt")
    heatmaps, _ = model(torch.zeros(1, 3, 64, 32))
    assert heatmaps.shape[1] == 17
    assert torch.isfinite(heatmaps).all()


def test_schedule_in_samples() -> None:
    from training.train_backbone import Schedule

    cfg = merge(
        PRESETS["cpu-small"],
        {"train_samples": 1000, "lr_drops": [0.5, 0.9], "warmup_samples": 100, "batch_size": 10},
    )
    s = Schedule.of(cfg, n_persons=95, world=2)
    assert (s.total_steps, s.milestones, s.step_samples, s.epoch_samples) == (50, (25, 45), 20, 80)
    assert s.lr_scale(0) == pytest.approx(1 / 5)
    assert s.lr_scale(10) == 1.0
    assert s.lr_scale(30) == pytest.approx(0.1)
    assert s.lr_scale(49) == pytest.approx(0.01)
    by_epochs = Schedule.of(merge(PRESETS["cpu-small"], {"batch_size": 10}), 95, 1)
    assert by_epochs.total_steps == 14 * 9
    assert by_epochs.milestones == (90, 117)


def test_fitted_samples_end_with_the_time_left(tmp_path: Path) -> None:
    """The 3-hour build's schedule: the rate of the probe sitting (its samples over its wall
    time) carried over the time left, less the margin, in whole steps, with a floor."""
    assert logged_samples(tmp_path) == 0  # no log yet
    (tmp_path / "log.jsonl").write_text('{"samples": 20000}\n{"samples": 28000}\n')
    assert logged_samples(tmp_path) == 28000
    # 28,000 samples in 600 s (46.7/s), 6,900 s left, 3% margin: 28,000 + 312,340 = 340,340,
    # down to whole steps of 32
    assert fitted_samples(0, 28000, 600.0, 6900.0, 32) == 340320
    assert fitted_samples(0, 28000, 600.0, 6900.0, 32, at_least=420000) == 420000
    # a resumed probe counts only what it trained itself
    # (8,000 in 600 s: 28,000 + 89,240 = 117,240 -> 117,216)
    assert fitted_samples(20000, 28000, 600.0, 6900.0, 32) == 117216
    with pytest.raises(ValueError, match="must have trained"):
        fitted_samples(28000, 28000, 600.0, 6900.0, 32)


def test_limb_loss_trains_a_head_that_never_reaches_the_model(tmp_path: Path) -> None:
    """The auxiliary limb loss (`limb_loss_weight`): logged beside the keypoint loss, its head
    saved for resuming (sittings end exactly as one run) but not in the model, whose keys are
    those of a run without it; a run without the head cannot be resumed with it."""
    torch.set_num_threads(1)
    over = _tiny(
        train_samples=48,
        report_every=16,
        warmup_samples=0,
        augment={"flip_prob": 0.5},
        limb_loss_weight=1.0,
    )
    cfg = merge(PRESETS["cpu-small"], over)
    train_backbone(cfg, tmp_path / "whole")
    while train_backbone(cfg, tmp_path / "parts", resume=True, time_budget_s=1e-9).get("stopped"):
        pass
    a = read_checkpoint(tmp_path / "whole" / "final.pt")
    b = read_checkpoint(tmp_path / "parts" / "final.pt")
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
    sa = torch.load(tmp_path / "whole" / "train_state.pt", weights_only=False)
    sb = torch.load(tmp_path / "parts" / "train_state.pt", weights_only=False)
    for k, v in sa["limb_head"].items():
        assert torch.equal(v, sb["limb_head"][k]), k
    assert sa["limb_head"]["conv.weight"].shape[0] == 16  # COCO's one-sided skeleton edges
    rows = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert all(r["train_limb_loss"] > 0 for r in rows)

    plain = merge(PRESETS["cpu-small"], {**over, "limb_loss_weight": 0.0})
    train_backbone(plain, tmp_path / "plain")
    c = read_checkpoint(tmp_path / "plain" / "final.pt")
    assert set(c.state_dict) == set(a.state_dict)
    assert not torch.equal(c.state_dict["final_layer.weight"], a.state_dict["final_layer.weight"])
    assert "train_limb_loss" not in json.loads(
        (tmp_path / "plain" / "log.jsonl").read_text().splitlines()[0]
    )
    longer = merge(PRESETS["cpu-small"], {**over, "train_samples": 64})
    with pytest.raises(RuntimeError, match="limb loss"):
        train_backbone(longer, tmp_path / "plain", resume=True)
    with pytest.raises(ValueError, match="limb_loss_weight"):
        train_backbone(merge(plain, {"limb_loss_weight": -1.0}), tmp_path / "bad")


def test_weight_ema_moves_towards_the_model_by_its_warmed_up_rate() -> None:
    from torch import nn

    from training.train_backbone import WeightEma

    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    ema = WeightEma(net, 0.9)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.add_(5)
    ema.update(net, 1)  # rate min(0.9, 2 / 11): mostly the model's
    d = 2 / 11
    now, theirs = ema.model.state_dict(), net.state_dict()
    for k, v in now.items():
        if v.is_floating_point():
            assert torch.allclose(v, d * before[k] + (1 - d) * theirs[k]), k
    assert int(now["1.num_batches_tracked"]) == 5  # integer buffers are copied
    assert ema.rate(1000) == 0.9
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert all(p.requires_grad for p in net.parameters())  # the trained model is untouched
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEma(net, 1.0)


def test_ema_run_writes_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    """With `ema_decay`, validation scores the average beside the weights, final.pt holds the
    average (final_raw.pt the trained weights), and sittings end exactly as one run."""
    torch.set_num_threads(1)
    over = _tiny(train_samples=64, report_every=32, warmup_samples=0, ema_decay=0.5)
    cfg = merge(PRESETS["cpu-small"], over)
    train_backbone(cfg, tmp_path / "whole")
    while True:
        m = train_backbone(cfg, tmp_path / "parts", resume=True, time_budget_s=1e-9)
        if m.get("stopped") != "time_budget":
            break
    for name in ("final.pt", "final_raw.pt"):
        a = read_checkpoint(tmp_path / "whole" / name)
        b = read_checkpoint(tmp_path / "parts" / name)
        for k, v in a.state_dict.items():
            assert torch.equal(v, b.state_dict[k]), (name, k)
    avg = read_checkpoint(tmp_path / "whole" / "final.pt")
    raw = read_checkpoint(tmp_path / "whole" / "final_raw.pt")
    assert (avg.meta["weights"], raw.meta["weights"]) == ("ema", "trained")
    assert any(not torch.equal(v, raw.state_dict[k]) for k, v in avg.state_dict.items())
    rows = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert "val_ema_AP" in rows[-1]
    assert "val_AP" in rows[-1]
    assert load_model(tmp_path / "whole" / "final.pt").config.input_hw == (64, 32)
    # a run trained without the average cannot be resumed with one
    plain = merge(PRESETS["cpu-small"], {**over, "ema_decay": 0.0, "train_samples": 32})
    train_backbone(plain, tmp_path / "plain")
    with pytest.raises(RuntimeError, match="ema_decay"):
        train_backbone(cfg, tmp_path / "plain", resume=True)
