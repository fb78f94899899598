"""Train a heatmap backbone (HRNet / SimpleBaseline) top-down on COCO-format data.

Runs as one process, or as several under `torchrun` (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs). The schedule is counted in optimizer steps (samples): `epochs` passes, or
`train_samples` samples. Every report (an epoch, or `report_every` samples), and when a time
budget ends a sitting, writes `last.pt` (the model, with its config) and `train_state.pt`
(optimizer, learning-rate schedule, RNG states, step = data position) atomically, so `--resume`
continues exactly where a run stopped; the best held-out AP (or PCK without annotations) is kept
as `best.pt`. With `ema_decay` an exponential moving average of the weights is kept beside them
(in `train_state.pt`), validated at every report and written as `final.pt` at the end. Each
report row in `log.jsonl` holds samples seen, throughput (samples/s and GFLOP/s) and the held-out
metrics: the learning curve. Rank 0 logs, shows progress and writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from copy import deepcopy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from models.checkpoint import atomic_save, load_weights, read_checkpoint, save_checkpoint
from models.codec import HeatmapCodec, decode_argmax, pair_correlations
from models.geometry import heatmap_to_image
from models.keypoints import get_spec
from models.postprocess import rescore
from models.preprocess import Normalization
from models.zoo import Backbone, build_backbone, count_conv_macs, get_config
from service.results import PersonPose
from training.config import BackboneTrainConfig, to_plain
from training.data.coco import CocoKeypoints
from training.data.sources import DatasetPaths, resolve_data
from training.data.topdown import SampleStream, TopDownDataset
from training.progress import progress

log = logging.getLogger(__name__)


class JointsMSELoss(nn.Module):
    """Official loss: 0.5 · MSE of weighted heatmaps, averaged over joints."""

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        w = weight[:, :, None, None]
        return 0.5 * torch.mean((pred * w - target * w) ** 2)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def distributed() -> Iterator[Dist]:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    try:
        yield d
    finally:
        dist.destroy_process_group()


def _device(d: Dist) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def build_model(cfg: BackboneTrainConfig) -> Backbone:
    spec = get_spec(cfg.data.spec)
    base = get_config(cfg.arch)
    model_cfg = replace(base, input_hw=cfg.input_hw, num_keypoints=spec.num_keypoints)
    model = build_backbone(model_cfg)
    if cfg.init_weights:
        load_weights(model, cfg.init_weights)
        log.info("initial weights from %s", cfg.init_weights)
    return model


def codec_for(cfg: BackboneTrainConfig) -> HeatmapCodec:
    stride = get_config(cfg.arch).output_stride
    return HeatmapCodec.for_input(
        cfg.input_hw, stride=stride, sigma=cfg.sigma, unbiased=cfg.unbiased_targets
    )


class LimbHead(nn.Module):
    """The auxiliary limb head (`limb_loss_weight`): one convolution from the backbone's
    features to a map per one-sided skeleton edge, beside the keypoint head. Training only."""

    def __init__(self, model: Backbone, n_edges: int) -> None:
        super().__init__()
        k = model.config.final_conv_kernel
        self.conv = nn.Conv2d(model.feature_channels, n_edges, k, 1, k // 2)
        nn.init.normal_(self.conv.weight, std=0.001)  # as the official final layer
        assert self.conv.bias is not None
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: Tensor) -> Tensor:
        out: Tensor = self.conv(features)
        return out


class WithLimbs(nn.Module):
    """A backbone and its limb head as one module (one optimizer, one DDP wrapper)."""

    def __init__(self, model: Backbone, head: LimbHead) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        heatmaps, features = self.model(x)
        return heatmaps, self.head(features)


class WeightEma:
    """An exponential moving average of a model's weights and buffers (BatchNorm statistics).

    After optimizer step `step` (counted from 1) every floating-point tensor moves towards the
    model's by 1 - d, d = min(decay, (1 + step) / (10 + step)), so the first steps are not
    dominated by the initialisation; integer buffers (BatchNorm's batch count) are copied.
    """

    def __init__(self, model: Backbone, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model: Backbone = deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        mine = self.model.state_dict()
        self._floats = [k for k, v in mine.items() if v.is_floating_point()]
        self._others = [k for k, v in mine.items() if not v.is_floating_point()]
        self._mine = [mine[k] for k in self._floats], [mine[k] for k in self._others]
        # the trained model's tensors, looked up once per model (state_dict() costs more than
        # the averaging itself; optimizer steps and load_state_dict update them in place)
        self._source: tuple[int, list[Tensor], list[Tensor]] | None = None

    def rate(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if self._source is None or self._source[0] != id(model):
            theirs = model.state_dict()
            self._source = (
                id(model),
                [theirs[k] for k in self._floats],
                [theirs[k] for k in self._others],
            )
        _, floats, others = self._source
        torch._foreach_lerp_(self._mine[0], floats, 1.0 - self.rate(step))
        for dst, src in zip(self._mine[1], others, strict=True):
            dst.copy_(src)


def limb_edges(cfg: BackboneTrainConfig) -> tuple[tuple[int, int], ...]:
    """The skeleton edges the limb loss trains (none when it is off)."""
    if cfg.limb_loss_weight < 0:
        raise ValueError(f"limb_loss_weight must be >= 0, got {cfg.limb_loss_weight}")
    if cfg.limb_loss_weight == 0:
        return ()
    return get_spec(cfg.data.spec).sided_edges


def normalization_of(model: Backbone) -> Normalization:
    c = model.config
    return Normalization(c.mean, c.std, c.color_order)


class StreamSampler(Sampler[tuple[int, int]]):
    """Endless (pass, person) keys for one process: pass e is a permutation of the n persons
    drawn from (seed, e), cut into steps of `batch * world` with the remainder dropped; process
    `rank` takes its `batch` slice of each step. `start_step` resumes exactly where a run
    stopped, whatever the number of loader workers."""

    def __init__(
        self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0
    ) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.steps_per_epoch = n // (batch * world)
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n} training persons cannot fill one step of {batch * world}")
        self.start_step = start_step

    def permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            perm = self.permutation(epoch)
            for s in range(within, self.steps_per_epoch):
                first = s * self.batch * self.world + self.rank * self.batch
                for i in perm[first : first + self.batch].tolist():
                    yield epoch, i
            step += self.steps_per_epoch - within

    def __len__(self) -> int:  # endless; DataLoader only asks for it in len(loader)
        raise TypeError("a StreamSampler is endless")


@dataclass(frozen=True)
class Schedule:
    """The run in optimizer steps: length, learning-rate milestones, reports."""

    total_steps: int
    milestones: tuple[int, ...]  # steps at which the learning rate is multiplied by factor
    factor: float
    warmup_steps: int
    report_steps: int
    step_samples: int  # samples per optimizer step, all processes together
    epoch_samples: int  # samples in one pass over the training persons (after the drop)

    @classmethod
    def of(cls, cfg: BackboneTrainConfig, n_persons: int, world: int) -> Schedule:
        step_samples = cfg.batch_size * world
        steps_per_epoch = n_persons // step_samples
        if cfg.train_samples > 0:
            total = max(1, math.ceil(cfg.train_samples / step_samples))
            milestones = tuple(round(f * total) for f in cfg.lr_drops)
        else:
            total = cfg.epochs * steps_per_epoch
            milestones = tuple(e * steps_per_epoch for e in cfg.lr_steps)
        report = (
            max(1, round(cfg.report_every / step_samples)) if cfg.report_every else steps_per_epoch
        )
        return cls(
            total_steps=total,
            milestones=milestones,
            factor=cfg.lr_factor,
            warmup_steps=math.ceil(cfg.warmup_samples / step_samples),
            report_steps=max(1, report),
            step_samples=step_samples,
            epoch_samples=steps_per_epoch * step_samples,
        )

    def lr_scale(self, step: int) -> float:
        """Multiplier of the base learning rate for optimizer step `step` (0-based)."""
        scale = self.factor ** sum(step >= m for m in self.milestones)
        if self.warmup_steps and step < self.warmup_steps:
            scale *= (step + 1) / self.warmup_steps
        return float(scale)


def make_datasets(
    cfg: BackboneTrainConfig, paths: DatasetPaths, model: Backbone
) -> tuple[TopDownDataset, TopDownDataset | None]:
    spec = get_spec(cfg.data.spec)
    codec = codec_for(cfg)
    norm = normalization_of(model)
    train = TopDownDataset(
        CocoKeypoints(paths.train_ann, spec),
        paths.train_images,
        codec,
        norm,
        cfg.augment,
        cfg.seed,
        limbs=limb_edges(cfg),
    )
    val = None
    if paths.val_ann is not None and paths.val_images is not None:
        val = TopDownDataset(CocoKeypoints(paths.val_ann, spec), paths.val_images, codec, norm)
    return train, val


def stream_loader(
    cfg: BackboneTrainConfig, train: TopDownDataset, d: Dist, start_step: int
) -> DataLoader[dict[str, Any]]:
    sampler = StreamSampler(len(train), cfg.batch_size, cfg.seed, d.rank, d.world, start_step)
    return DataLoader(
        SampleStream(train),
        sampler=sampler,
        batch_size=cfg.batch_size,
        num_workers=cfg.workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if cfg.workers > 0 else None,
        # worker seeds from their own generator: the global RNG stays as a resumed run left it
        generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + start_step),
    )


def pck_accuracy(pred: Tensor, target: Tensor, weight: Tensor, thr: float = 0.5) -> float:
    """Official `accuracy`: share of labelled joints whose argmax is within thr·(h/10, w/10)
    of the target's argmax, on heatmaps."""
    p, _ = decode_argmax(pred.detach().float().cpu().numpy(), quarter_shift=False)
    t, tv = decode_argmax(target.cpu().numpy(), quarter_shift=False)
    h, w = pred.shape[-2:]
    norm = np.array([w, h]) / 10.0
    ok = (weight.cpu().numpy() > 0) & (tv > 0)
    dist_ = np.linalg.norm((p - t) / norm, axis=-1)
    return float((dist_[ok] < thr).mean()) if ok.any() else 0.0


def logged_samples(run: Path) -> int:
    """Samples a run has seen by its last log row (0 before its first)."""
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return int(rows[-1]["samples"]) if rows else 0


def fitted_samples(
    samples_before: int,
    samples_after: int,
    sitting_seconds: float,
    seconds_left: float,
    step_samples: int,
    at_least: int = 0,
    margin: float = 0.03,
) -> int:
    """A schedule length (samples) that ends when `seconds_left` more wall time has passed, at
    the rate of a sitting that took the run from `samples_before` to `samples_after` in
    `sitting_seconds` of wall time (start-up, checkpoints and validation included, as they will
    be later), less `margin` of the time; whole steps of `step_samples`, at least `at_least`.

    The 3-hour build sizes the backbone's one schedule this way from a first sitting beside the
    detector: until 75% of its length the learning rate does not depend on the length, so it
    can be chosen after the run has started."""
    if sitting_seconds <= 0 or samples_after <= samples_before:
        raise ValueError("the sitting must have trained (samples and seconds above 0)")
    rate = (samples_after - samples_before) / sitting_seconds
    n = samples_after + rate * max(seconds_left, 0.0) * (1.0 - margin)
    steps = math.floor(n / step_samples)
    return max(at_least, steps * step_samples)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX); else torch emulates it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def _autocast(cfg: BackboneTrainConfig, device: torch.device) -> Any:
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cfg.cpu_bf16:
        if cpu_bf16_native():
            return torch.autocast("cpu", dtype=torch.bfloat16)
        log.warning("cpu_bf16 asked, but this CPU has no native bf16 (avx512_bf16/AMX): off")
    return nullcontext()


def _model_flops(model: Backbone, cfg: BackboneTrainConfig) -> float:
    """Arithmetic FLOPs of one training sample: forward MACs x 2, x 3 for forward + backward."""
    x = torch.zeros(1, 3, *cfg.input_hw)
    was = model.training
    model.eval()
    macs = count_conv_macs(model, lambda: model(x))
    model.train(was)
    return 6.0 * macs


def train_backbone(
    cfg: BackboneTrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Train; returns the last metrics. Files land in `out_dir`.

    With `time_budget_s` the run stops cleanly at the first step boundary past the budget (this
    sitting's wall time), saving everything `resume` needs to continue exactly: model,
    optimizer, learning-rate schedule, RNG states and the data position. `metrics["stopped"]`
    then says "time_budget"; `final.pt` is written only when the schedule is complete.
    """
    out = Path(out_dir)
    t_start = time.perf_counter()
    limb_edges(cfg)  # a bad limb_loss_weight fails here, before anything is written
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    with distributed() as d:
        torch.manual_seed(cfg.seed + d.rank)
        device = _device(d)
        paths = resolve_data(cfg.data, out / "data", is_main=d.main)
        if d.world > 1:
            dist.barrier()  # rank 0 may have generated synthetic data
        model = build_model(cfg).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        train, val = make_datasets(cfg, paths, model)
        sched = Schedule.of(cfg, len(train), d.world)
        trained: nn.Module = model
        limb_head: LimbHead | None = None
        if train.limbs:
            limb_head = LimbHead(model, len(train.limbs)).to(device)
            trained = WithLimbs(model, limb_head)
        optimizer = torch.optim.Adam(trained.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sched.lr_scale)
        ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        state = RunState()
        if resume and (out / "train_state.pt").exists():
            state = _resume(out, model, optimizer, scheduler, limb_head, ema)
            log.info(
                "resumed at step %d (%d samples, %.0f s of training so far)",
                state.step,
                state.step * sched.step_samples,
                state.wall_seconds,
            )
        net: nn.Module = trained
        if d.world > 1:
            net = DistributedDataParallel(
                trained, device_ids=[d.local_rank] if device.type == "cuda" else None
            )
        criterion = JointsMSELoss()
        flops = _model_flops(model, cfg)
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(to_plain(cfg), indent=2) + "\n")
            log.info(
                "training %s on %d persons, %d process(es), device %s, %d steps of %d samples "
                "(%.1f passes), %.2f GFLOP per sample (forward + backward)",
                cfg.arch,
                len(train),
                d.world,
                device,
                sched.total_steps,
                sched.step_samples,
                sched.total_steps * sched.step_samples / max(sched.epoch_samples, 1),
                flops / 1e9,
            )
        metrics: dict[str, Any] = {}
        if state.step >= sched.total_steps:
            log.info("the schedule is already complete (%d steps)", state.step)
        else:
            metrics = _run_steps(
                cfg, sched, net, model, train, val, paths, criterion, optimizer, scheduler,
                state, device, d, out, flops, t_start, time_budget_s, limb_head, ema,
            )  # fmt: skip
        if d.world > 1:
            metrics["ddp_consistent"] = _params_agree(model)
        if d.main and state.step >= sched.total_steps:
            meta = {
                "train_config": to_plain(cfg),
                "metrics": metrics,
                "world_size": d.world,
                "samples": state.step * sched.step_samples,
                "train_seconds": state.wall_seconds,
            }
            if ema is not None:
                # the trained weights first: final.pt's existence means the run is complete
                save_checkpoint(out / "final_raw.pt", model, {**meta, "weights": "trained"})
                save_checkpoint(out / "final.pt", ema.model, {**meta, "weights": "ema"})
            else:
                save_checkpoint(out / "final.pt", model, meta)
        return metrics


@dataclass
class RunState:
    """What a resumed run needs beyond the model and optimizer."""

    step: int = 0
    best: float = -1.0
    wall_seconds: float = 0.0  # training wall time over all sittings (not validation)
    loss_sum: float = 0.0  # since the last report
    loss_count: int = 0
    limb_loss_sum: float = 0.0  # the auxiliary limb loss alone, since the last report


def _run_steps(
    cfg: BackboneTrainConfig,
    sched: Schedule,
    net: nn.Module,
    model: Backbone,
    train: TopDownDataset,
    val: TopDownDataset | None,
    paths: DatasetPaths,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: RunState,
    device: torch.device,
    d: Dist,
    out: Path,
    flops: float,
    t_start: float,
    time_budget_s: float | None,
    limb_head: LimbHead | None = None,
    ema: WeightEma | None = None,
) -> dict[str, Any]:
    loader = stream_loader(cfg, train, d, state.step)
    amp = _autocast(cfg, device)
    metrics: dict[str, Any] = {}
    net.train()
    bar = progress(
        range(state.step, sched.total_steps),
        desc="train",
        disable=not d.main,
        unit="step",
        initial=state.step,
        total=sched.total_steps,
    )
    batches = iter(loader)
    t_report, samples_report = time.perf_counter(), 0
    stopped = None
    for _ in bar:
        t0 = time.perf_counter()
        batch = next(batches)
        x = batch["image"].to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = batch["target"].to(device, non_blocking=True)
        weight = batch["target_weight"].to(device, non_blocking=True)
        with amp:
            heatmaps, second = net(x)
        loss = criterion(heatmaps.float(), target, weight)
        keypoint_loss = float(loss.item())
        if limb_head is not None:
            limbs = batch["limbs"].to(device, non_blocking=True)
            limb_weight = batch["limb_weight"].to(device, non_blocking=True)
            limb_loss = criterion(second.float(), limbs, limb_weight)
            state.limb_loss_sum += float(limb_loss.item())
            loss = loss + cfg.limb_loss_weight * limb_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {state.step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.step += 1
        if ema is not None:
            ema.update(model, state.step)
        state.loss_sum += keypoint_loss  # the keypoint loss, comparable with runs without limbs
        state.loss_count += 1
        state.wall_seconds += time.perf_counter() - t0
        samples_report += sched.step_samples
        bar.set_postfix(loss=f"{state.loss_sum / state.loss_count:.6f}", refresh=False)
        over = time_budget_s is not None and time.perf_counter() - t_start > time_budget_s
        done = state.step >= sched.total_steps
        if over and not done:
            stopped = "time_budget"
        if state.step % sched.report_steps == 0 or done or stopped:
            seconds = time.perf_counter() - t_report
            metrics = _report(state, sched, optimizer, samples_report, seconds, flops)
            report_no = state.step // sched.report_steps
            due = (state.step % sched.report_steps == 0 and report_no % cfg.val_every == 0) or done
            if d.main and val is not None and due:
                metrics.update(_validate(model, val, paths, criterion, device, cfg.batch_size))
                if ema is not None:
                    averaged = _validate(ema.model, val, paths, criterion, device, cfg.batch_size)
                    metrics.update({f"val_ema_{k[4:]}": v for k, v in averaged.items()})
                net.train()
            if stopped:
                metrics["stopped"] = stopped
            if d.main:
                _save(out, cfg, model, optimizer, scheduler, metrics, state, limb_head, ema)
            t_report, samples_report = time.perf_counter(), 0
        if stopped:
            log.info(
                "time budget reached at step %d of %d (%d samples): resume with --resume",
                state.step,
                sched.total_steps,
                state.step * sched.step_samples,
            )
            break
    bar.close()
    return metrics


def _report(
    state: RunState,
    sched: Schedule,
    optimizer: torch.optim.Optimizer,
    samples: int,
    seconds: float,
    flops: float,
) -> dict[str, Any]:
    seen = state.step * sched.step_samples
    rate = samples / max(seconds, 1e-9)
    m: dict[str, Any] = {
        "step": state.step,
        "samples": seen,
        "epoch": round(seen / max(sched.epoch_samples, 1), 3),
        "train_loss": state.loss_sum / max(state.loss_count, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "train_seconds_total": state.wall_seconds,
        "samples_per_s": rate,
        "gflops": rate * flops / 1e9,
    }
    if state.limb_loss_sum:
        m["train_limb_loss"] = state.limb_loss_sum / max(state.loss_count, 1)
    state.loss_sum, state.loss_count, state.limb_loss_sum = 0.0, 0, 0.0
    return m


@torch.no_grad()
def _validate(
    model: Backbone,
    val: TopDownDataset,
    paths: DatasetPaths,
    criterion: nn.Module,
    device: torch.device,
    batch_size: int,
) -> dict[str, float]:
    """Held-out heatmap loss and PCK, and COCO AP with ground-truth boxes (one prediction per
    box, argmax + quarter-pixel decoding, no flip: a learning-curve measure; `scio-pose
    evaluate` runs the service's pipeline for the reported numbers)."""
    model.eval()
    loader = DataLoader(val, batch_size=batch_size, sampler=SequentialSampler(val))
    loss, acc, n = 0.0, 0.0, 0
    results: dict[int, list[PersonPose]] = {}
    codec = val.codec
    pairs = val.spec.flip_pairs
    pair_corr: list[list[npt.NDArray[np.float64]]] = [[] for _ in pairs]
    for batch in loader:
        x = batch["image"].to(device)
        heatmaps, _ = model(x)
        target = batch["target"].to(device)
        weight = batch["target_weight"].to(device)
        loss += float(criterion(heatmaps.float(), target, weight)) * len(x)
        acc += pck_accuracy(heatmaps, target, weight) * len(x)
        n += len(x)
        hm = heatmaps.float().cpu().numpy()
        labelled = (weight > 0).cpu().numpy()
        for j, corr in enumerate(pair_correlations(hm, labelled, pairs)):
            pair_corr[j].append(corr)
        coords, maxvals = codec.decode(hm)
        kp = heatmap_to_image(
            coords, batch["center"].numpy(), batch["scale"].numpy(), codec.heatmap_hw
        )
        scores = rescore(np.ones(len(hm)), maxvals)
        no_box = np.zeros(4)  # the box is not scored in keypoint AP
        for i in range(len(hm)):
            k = np.concatenate([kp[i], maxvals[i][:, None]], axis=1)
            pose = PersonPose(no_box, 1.0, float(scores[i]), k, [])
            results.setdefault(int(batch["image_id"][i]), []).append(pose)
    out: dict[str, Any] = {"val_loss": loss / max(n, 1), "val_acc": acc / max(n, 1)}
    # the left/right pair whose two heatmaps are most alike (median over persons): near 1, the
    # network has stopped telling the sides apart (benchmarks/mirror_pairs.py; stop 36: the
    # shipped backbone's ankles at 1.000, every other pair of it at most 0.90)
    medians = [
        float(np.median(np.concatenate(c))) if sum(map(len, c)) else float("nan") for c in pair_corr
    ]
    if medians and not all(np.isnan(medians)):
        worst = int(np.nanargmax(medians))
        out["val_lr_corr"] = medians[worst]
        out["val_lr_corr_pair"] = val.spec.keypoint_names[pairs[worst][0]].removeprefix("left_")
    if paths.val_ann is not None and results:
        from training.evaluate import coco_stats, to_coco_results

        stats = coco_stats(paths.val_ann, to_coco_results(results), val.spec, sorted(results))
        out.update({f"val_{k}": v for k, v in stats.items() if k in ("AP", "AP50", "AP75", "AR")})
    return out


def _save(
    out: Path,
    cfg: BackboneTrainConfig,
    model: Backbone,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    metrics: dict[str, Any],
    state: RunState,
    limb_head: LimbHead | None = None,
    ema: WeightEma | None = None,
) -> None:
    score = metrics.get("val_AP", metrics.get("val_acc"))
    new_best = score is not None and float(score) > state.best
    if score is not None and new_best:
        state.best = float(score)
    meta = {"train_config": to_plain(cfg), "metrics": metrics, "step": state.step}
    save_checkpoint(out / "last.pt", model, meta)
    atomic_save(
        {
            "step": state.step,
            "best": state.best,
            "wall_seconds": state.wall_seconds,
            "loss_sum": state.loss_sum,
            "loss_count": state.loss_count,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # the global generators too, for any library code that draws from them
            "numpy_rng": np.random.get_state(legacy=False),  # noqa: NPY002
            "python_rng": random.getstate(),
            **({"limb_head": limb_head.state_dict()} if limb_head is not None else {}),
            **({"ema": ema.model.state_dict()} if ema is not None else {}),
            "limb_loss_sum": state.limb_loss_sum,
        },
        out / "train_state.pt",
    )
    if new_best:
        save_checkpoint(out / "best.pt", model, meta)
    with (out / "log.jsonl").open("a") as fh:
        fh.write(json.dumps(metrics) + "\n")
    shown = ", ".join(
        f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    log.info("%s", shown)


def _resume(
    out: Path,
    model: Backbone,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    limb_head: LimbHead | None = None,
    ema: WeightEma | None = None,
) -> RunState:
    ckpt = read_checkpoint(out / "last.pt")
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=False)
    if int(ckpt.meta.get("step", -1)) != int(state["step"]):
        raise RuntimeError(f"{out}: last.pt and train_state.pt are from different steps")
    model.load_state_dict(ckpt.state_dict, strict=True)
    if limb_head is not None:
        if "limb_head" not in state:
            raise RuntimeError(f"{out}: the run was not trained with a limb loss; cannot resume")
        limb_head.load_state_dict(state["limb_head"])
    if ema is not None:
        if "ema" not in state:
            raise RuntimeError(f"{out}: the run was not trained with ema_decay; cannot resume")
        ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])  # noqa: NPY002
    random.setstate(state["python_rng"])
    return RunState(
        step=int(state["step"]),
        best=float(state["best"]),
        wall_seconds=float(state["wall_seconds"]),
        loss_sum=float(state["loss_sum"]),
        loss_count=int(state["loss_count"]),
        limb_loss_sum=float(state.get("limb_loss_sum", 0.0)),
    )


def _params_agree(model: nn.Module) -> bool:
    """After DDP training every rank must hold the same weights."""
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    checksum = torch.tensor([float(flat.sum()), float((flat * flat).sum())], dtype=torch.float64)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=0, atol=0) for g in gathered)


__all__ = [
    "JointsMSELoss",
    "Schedule",
    "StreamSampler",
    "WeightEma",
    "build_model",
    "codec_for",
    "fitted_samples",
    "logged_samples",
    "pck_accuracy",
    "train_backbone",
]
