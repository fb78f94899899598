"""Train a heatmap backbone (HRNet / SimpleBaseline) top-down on COCO-format data.

Runs as one process, or as several under `torchrun` (DistributedDataParallel; NCCL on GPUs,
gloo on CPUs). Every epoch writes `last.pt` (the model, with its config) and `train_state.pt`
(optimizer, scheduler, epoch) atomically, so `--resume` continues where a run stopped; the best
validation accuracy is kept as `best.pt`. Rank 0 logs, shows progress and writes files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from models.checkpoint import atomic_save, load_weights, read_checkpoint, save_checkpoint
from models.codec import HeatmapCodec, decode_argmax
from models.keypoints import get_spec
from models.preprocess import Normalization
from models.zoo import Backbone, build_backbone, get_config
from training.config import BackboneTrainConfig, to_plain
from training.data.coco import CocoKeypoints
from training.data.sources import DatasetPaths, resolve_data
from training.data.topdown import TopDownDataset
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
    return HeatmapCodec.for_input(cfg.input_hw, sigma=cfg.sigma, unbiased=cfg.unbiased_targets)


def normalization_of(model: Backbone) -> Normalization:
    c = model.config
    return Normalization(c.mean, c.std, c.color_order)


def make_loaders(
    cfg: BackboneTrainConfig, paths: DatasetPaths, model: Backbone, d: Dist
) -> tuple[DataLoader[dict[str, Any]], DataLoader[dict[str, Any]] | None]:
    spec = get_spec(cfg.data.spec)
    codec = codec_for(cfg)
    norm = normalization_of(model)
    train = TopDownDataset(
        CocoKeypoints(paths.train_ann, spec), paths.train_images, codec, norm, cfg.augment, cfg.seed
    )
    if d.world > 1:
        sampler: Any = DistributedSampler(train, d.world, d.rank, shuffle=True, seed=cfg.seed)
    else:
        sampler = RandomSampler(train, generator=torch.Generator().manual_seed(cfg.seed))
    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "num_workers": cfg.workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": cfg.workers > 0,
    }
    train_loader = DataLoader(train, sampler=sampler, drop_last=True, **common)
    val_loader = None
    if paths.val_ann is not None and paths.val_images is not None:
        val = TopDownDataset(CocoKeypoints(paths.val_ann, spec), paths.val_images, codec, norm)
        val_loader = DataLoader(val, sampler=SequentialSampler(val), **common)
    return train_loader, val_loader


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


def train_backbone(
    cfg: BackboneTrainConfig, out_dir: str | Path, resume: bool = False
) -> dict[str, Any]:
    """Train; returns the final metrics. Files land in `out_dir`."""
    out = Path(out_dir)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    with distributed() as d:
        torch.manual_seed(cfg.seed + d.rank)
        device = _device(d)
        paths = resolve_data(cfg.data, out / "data", is_main=d.main)
        if d.world > 1:
            dist.barrier()  # rank 0 may have generated synthetic data
        model = build_model(cfg).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(cfg.lr_steps), gamma=cfg.lr_factor
        )
        start_epoch, best = 0, -1.0
        if resume and (out / "train_state.pt").exists():
            start_epoch, best = _resume(out, model, optimizer, scheduler)
            log.info("resumed at epoch %d (best val accuracy %.4f)", start_epoch, best)
        net: nn.Module = model
        if d.world > 1:
            net = DistributedDataParallel(
                model, device_ids=[d.local_rank] if device.type == "cuda" else None
            )
        train_loader, val_loader = make_loaders(cfg, paths, model, d)
        if not d.main:
            val_loader = None
        criterion = JointsMSELoss()
        if d.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text(json.dumps(to_plain(cfg), indent=2) + "\n")
            log.info(
                "training %s on %d persons, %d process(es), device %s, %d epochs",
                cfg.arch,
                len(train_loader.dataset),  # type: ignore[arg-type]
                d.world,
                device,
                cfg.epochs,
            )
        metrics: dict[str, Any] = {}
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            train_loss = _train_epoch(
                cfg, net, train_loader, criterion, optimizer, device, d, epoch
            )
            scheduler.step()
            metrics = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
            due = (epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs
            if d.main and val_loader is not None and due:
                # the unwrapped model: no collectives, so other ranks just wait at the next step
                metrics.update(_validate(model, val_loader, criterion, device))
            if d.main:
                best = _save_epoch(out, cfg, model, optimizer, scheduler, metrics, best)
        if d.world > 1:
            metrics["ddp_consistent"] = _params_agree(model)
        if d.main:
            save_checkpoint(
                out / "final.pt",
                model,
                {"train_config": to_plain(cfg), "metrics": metrics, "world_size": d.world},
            )
        return metrics


def _train_epoch(
    cfg: BackboneTrainConfig,
    net: nn.Module,
    loader: DataLoader[dict[str, Any]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    d: Dist,
    epoch: int,
) -> float:
    net.train()
    loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cfg.amp and device.type == "cuda"
        else nullcontext()
    )
    total, count = 0.0, 0
    bar = progress(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not d.main)
    for batch in bar:
        x = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        weight = batch["target_weight"].to(device, non_blocking=True)
        with amp:
            heatmaps, _ = net(x)
        loss = criterion(heatmaps.float(), target, weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.item()) * len(x)
        count += len(x)
        bar.set_postfix(loss=f"{total / count:.6f}")
    return total / max(count, 1)


@torch.no_grad()
def _validate(
    model: Backbone,
    loader: DataLoader[dict[str, Any]],
    criterion: nn.Module,
    device: torch.device,
) -> dict[str, float]:
    model.eval()
    loss, acc, n = 0.0, 0.0, 0
    for batch in loader:
        x = batch["image"].to(device)
        heatmaps, _ = model(x)
        target = batch["target"].to(device)
        weight = batch["target_weight"].to(device)
        loss += float(criterion(heatmaps.float(), target, weight)) * len(x)
        acc += pck_accuracy(heatmaps, target, weight) * len(x)
        n += len(x)
    return {"val_loss": loss / max(n, 1), "val_acc": acc / max(n, 1)}


def _save_epoch(
    out: Path,
    cfg: BackboneTrainConfig,
    model: Backbone,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    metrics: dict[str, Any],
    best: float,
) -> float:
    meta = {"train_config": to_plain(cfg), "metrics": metrics}
    save_checkpoint(out / "last.pt", model, meta)
    atomic_save(
        {
            "epoch": metrics["epoch"],
            "best": best,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        },
        out / "train_state.pt",
    )
    acc = metrics.get("val_acc")
    if acc is not None and acc > best:
        best = float(acc)
        save_checkpoint(out / "best.pt", model, meta)
    with (out / "log.jsonl").open("a") as fh:
        fh.write(json.dumps(metrics) + "\n")
    shown = ", ".join(
        f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    log.info("%s", shown)
    return best


def _resume(
    out: Path, model: Backbone, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, float]:
    ckpt = read_checkpoint(out / "last.pt")
    state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)
    if int(ckpt.meta.get("metrics", {}).get("epoch", -1)) != int(state["epoch"]):
        raise RuntimeError(f"{out}: last.pt and train_state.pt are from different epochs")
    model.load_state_dict(ckpt.state_dict, strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]), float(state["best"])


def _params_agree(model: nn.Module) -> bool:
    """After DDP training every rank must hold the same weights."""
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    checksum = torch.tensor([float(flat.sum()), float((flat * flat).sum())], dtype=torch.float64)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.allclose(g, gathered[0], rtol=0, atol=0) for g in gathered)


__all__ = ["JointsMSELoss", "build_model", "codec_for", "pck_accuracy", "train_backbone"]
