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
from training.train_backbone import train_backbone  # noqa: E402

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
