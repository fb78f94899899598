"""Self-constrained learning (SCL) of the SCIO networks Φ and Γ, the backbone frozen.

Paper eq. 9-11, alternating step by step (one network trains while the other is frozen):

    Φ step:  ‖Φ(H_B, H_C, H_A; f) − H̄_D‖² + ‖Γ(H_B, H_C, Φ(·); f) − H̄_A‖²
    Γ step:  ‖Γ(H_B, H_C, H_D; f) − H̄_A‖² + ‖Φ(H_B, H_C, Γ(·); f) − H̄_D‖²
             + ‖Γ(H_B, H_C, G(x_D); f) − H̄_A‖²                      (D as the search renders it)
             + λ · mean relu(m·|δ|/4 + s(x_D) − s(x_D + δ))          (listen to D: ranking)

where H are the backbone's heatmaps, H̄ ground-truth Gaussians, G(x) the codec's Gaussian at x,
and s(x) = ‖H_A − Γ(H_B, H_C, G(x); f)‖₂ the self-constraint loss the inference search
minimises (against the backbone's own H_A, as at inference). Γ also drops f for whole samples
(feature_dropout) so it cannot read A off the features and ignore D.

The backbone's outputs are computed once, over a few augmented passes of the training set, so
the SCIO networks train without re-running the backbone every epoch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from models.checkpoint import atomic_save, read_checkpoint, save_checkpoint
from models.codec import decode_argmax, fuse_flip, resolve_flip_shift
from models.keypoints import KeypointSpec, get_spec, proximal_groups
from models.scio_nets import ScioNet, ScioNetConfig
from models.scio_search import grid_offsets
from models.zoo import Backbone, build_backbone
from training.config import BackboneTrainConfig, ScioTrainConfig, from_dict, to_plain
from training.data.coco import CocoKeypoints
from training.data.sources import coco_folder, resolve_data
from training.data.topdown import TopDownDataset
from training.progress import progress
from training.train_backbone import codec_for, normalization_of

log = logging.getLogger(__name__)
DISPLACEMENTS = (1.0, 2.0, 4.0)  # heatmap pixels, for the ranking term and the report


@dataclass
class BackboneOutputs:
    """Cached backbone outputs for N persons (heatmap coordinates throughout)."""

    heatmaps: Tensor  # (N, K, h, w) float16
    features: Tensor  # (N, C, h, w) float16
    joints: Tensor  # (N, K, 2) float32, ground truth in heatmap pixels
    visible: Tensor  # (N, K) bool, labelled and inside the heatmap

    def __len__(self) -> int:
        return len(self.heatmaps)


@torch.no_grad()
def collect_outputs(
    backbone: Backbone,
    dataset: TopDownDataset,
    passes: int,
    batch_size: int,
    limit: int | None = None,
    desc: str = "backbone outputs",
    flip_index: npt.NDArray[np.intp] | None = None,
    flip_shift: float | str = "exact",
) -> BackboneOutputs:
    """The backbone's heatmaps and features for the dataset's persons. With `flip_index`, the
    heatmaps are flip-fused as the service's flip test fuses them (the mirrored crop's heatmaps
    flipped back, left/right swapped, moved `flip_shift` heatmap px right, averaged; "exact": the
    exact shift for the codec's stride, which `export` writes into the bundle by default); the
    features stay the unmirrored crop's, as the service passes them to Φ and Γ."""
    backbone.eval()
    h, w = dataset.codec.heatmap_hw
    shift = resolve_flip_shift(flip_shift, dataset.codec.input_hw[1], w)
    stride = torch.as_tensor(dataset.codec.stride_xy, dtype=torch.float32)
    # Written into preallocated tensors: concatenating a list of batches would hold the cache
    # twice at its peak (about 10 GB for 32,000 persons at 64x48).
    total = len(dataset) * passes if limit is None else min(limit, len(dataset) * passes)
    out: BackboneOutputs | None = None
    n = 0
    for p in range(passes):
        dataset.set_epoch(10_000 + p)  # augmentation draws differ from the backbone's epochs
        loader = DataLoader(dataset, batch_size=batch_size, sampler=SequentialSampler(dataset))
        for batch in progress(loader, desc=f"{desc} (pass {p + 1}/{passes})"):
            heat, f = backbone(batch["image"])
            if flip_index is not None:
                mirrored = backbone(batch["image"].flip(-1))[0]
                heat = torch.from_numpy(
                    fuse_flip(heat.numpy(), mirrored.numpy(), flip_index, shift)
                )
            j = batch["joints"] / stride  # input pixels -> heatmap pixels
            inside = (
                (j[..., 0] >= 0) & (j[..., 0] <= w - 1) & (j[..., 1] >= 0) & (j[..., 1] <= h - 1)
            )
            if out is None:
                out = BackboneOutputs(
                    torch.empty((total, *heat.shape[1:]), dtype=torch.float16),
                    torch.empty((total, *f.shape[1:]), dtype=torch.float16),
                    torch.empty((total, *j.shape[1:]), dtype=torch.float32),
                    torch.empty((total, *j.shape[1:-1]), dtype=torch.bool),
                )
            m = min(len(heat), total - n)
            out.heatmaps[n : n + m] = heat[:m]
            out.features[n : n + m] = f[:m]
            out.joints[n : n + m] = j[:m]
            out.visible[n : n + m] = ((batch["target_weight"] > 0) & inside)[:m]
            n += m
            if n >= total:
                break
        if n >= total:
            break
    if out is None:
        raise ValueError("no persons to collect backbone outputs from")
    return BackboneOutputs(*(t[:n] for t in (out.heatmaps, out.features, out.joints, out.visible)))


def render(points: Tensor, hw: tuple[int, int], sigma: float) -> Tensor:
    """Peak-1 Gaussians at sub-pixel points (M, 2) -> (M, 1, h, w); models.codec's G(x) in torch."""
    h, w = hw
    xs = torch.arange(w, dtype=points.dtype, device=points.device)
    ys = torch.arange(h, dtype=points.dtype, device=points.device)
    gx = torch.exp(-((xs[None] - points[:, 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((ys[None] - points[:, 1:2]) ** 2) / (2 * sigma**2))
    return (gy[:, :, None] * gx[:, None, :])[:, None]


@dataclass
class GroupBatch:
    """All valid (person, group) rows of a batch, as the networks take them."""

    hb: Tensor  # (R, 1, h, w) backbone H_B
    hc: Tensor
    ha: Tensor  # backbone H_A (the self-constraint target at inference)
    hd: Tensor  # backbone H_D
    f: Tensor  # (R, C, h, w)
    group: Tensor  # (R,) int64
    gt_a: Tensor  # (R, 1, h, w) ground-truth Gaussian of A
    gt_d: Tensor
    xd: Tensor  # (R, 2) true D, heatmap pixels


def group_rows(
    out: BackboneOutputs, idx: Tensor, spec: KeypointSpec, sigma: float
) -> GroupBatch | None:
    h, w = out.heatmaps.shape[-2:]
    rows, gids = [], []
    for gi, g in enumerate(spec.groups):
        ok = out.visible[idx, g.a] & out.visible[idx, g.d]
        sel = idx[ok]
        rows.append(sel)
        gids.append(torch.full((len(sel),), gi, dtype=torch.long))
    p = torch.cat(rows)
    if len(p) == 0:
        return None
    gid = torch.cat(gids)
    members = torch.tensor([[g.a, g.b, g.c, g.d] for g in spec.groups], dtype=torch.long)[gid]
    heat = out.heatmaps[p].float()  # (R, K, h, w)
    r = torch.arange(len(p))

    def pick(col: int) -> Tensor:
        return heat[r, members[:, col]][:, None]

    xa = out.joints[p, members[:, 0]]
    xd = out.joints[p, members[:, 3]]
    return GroupBatch(
        hb=pick(1),
        hc=pick(2),
        ha=pick(0),
        hd=pick(3),
        f=out.features[p].float(),
        group=gid,
        gt_a=render(xa, (h, w), sigma),
        gt_d=render(xd, (h, w), sigma),
        xd=xd,
    )


def sq(a: Tensor, b: Tensor) -> Tensor:
    """Squared L2 distance per row, averaged over rows."""
    return ((a - b) ** 2).flatten(1).sum(1).mean()


def constraint_loss(target: Tensor, pred: Tensor, score: str = "l2") -> Tensor:
    """s = ‖target − pred‖₂ per row: the inference objective. (R, 1, h, w) -> (R,).
    `score="normalized"`: between the maps scaled to unit norm (models.scio_search's twin)."""
    t, p = target.flatten(1), pred.flatten(1)
    if score == "normalized":
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-6)
        p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return ((t - p) ** 2).sum(1).clamp_min(1e-12).sqrt()


def displaced(xd: Tensor, radius: float, hw: tuple[int, int], gen: torch.Generator) -> Tensor:
    ang = torch.rand(len(xd), generator=gen) * (2 * math.pi)
    d = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * radius
    h, w = hw
    return torch.stack(
        [(xd[:, 0] + d[:, 0]).clamp(0, w - 1), (xd[:, 1] + d[:, 1]).clamp(0, h - 1)], 1
    )


def phi_step(phi: ScioNet, gamma: ScioNet, b: GroupBatch) -> Tensor:
    ctx = phi.context(b.hb, b.hc, b.f, b.group)
    pred_d = phi.head(ctx, b.ha)
    back_a = gamma(b.hb, b.hc, pred_d, b.f, b.group)
    return sq(pred_d, b.gt_d) + sq(back_a, b.gt_a)


def gamma_step(
    gamma: ScioNet,
    phi: ScioNet,
    b: GroupBatch,
    cfg: ScioTrainConfig,
    sigma: float,
    gen: torch.Generator,
) -> tuple[Tensor, dict[str, float]]:
    hw = (b.hb.shape[-2], b.hb.shape[-1])
    r = len(b.xd)
    ctx = gamma.context(b.hb, b.hc, b.f, b.group)
    pred_a = gamma.head(ctx, b.hd)
    forward_d = phi(b.hb, b.hc, pred_a, b.f, b.group)
    # The true D and its displaced copies go through Γ's head in one batch: in train mode
    # BatchNorm normalises with the batch's statistics, and the ranking term must compare
    # candidates normalised alike, as they are at inference (running statistics for all).
    points = torch.cat(
        [b.xd, *(displaced(b.xd, radius, hw, gen) for radius in DISPLACEMENTS)]
    )  # (R·(1+n), 2): block 0 the true D, block i the i-th radius
    rows = torch.arange(r).repeat(1 + len(DISPLACEMENTS))
    cand_a = gamma.head(ctx, render(points, hw, sigma), rows)
    s = constraint_loss(b.ha[rows], cand_a, cfg.score).reshape(1 + len(DISPLACEMENTS), r)
    true_a = cand_a[:r]
    rank = torch.zeros(())
    for i, radius in enumerate(DISPLACEMENTS):
        rank = rank + torch.relu(cfg.rank_margin * radius / 4 + s[0] - s[1 + i]).mean()
    rank = rank / len(DISPLACEMENTS)
    loss = sq(pred_a, b.gt_a) + sq(forward_d, b.gt_d) + sq(true_a, b.gt_a) + cfg.rank_weight * rank
    stats = {"rank": rank.item()}
    if cfg.listwise_weight > 0:
        lw = listwise(gamma, ctx, b, cfg, sigma, gen)
        loss = loss + cfg.listwise_weight * lw
        stats["listwise"] = lw.item()
    if cfg.candidates_weight > 0:
        cw = search_candidates(gamma, phi, ctx, b, cfg, sigma, gen)
        loss = loss + cfg.candidates_weight * cw
        stats["candidates"] = cw.item()
    return loss, stats


def heatmap_argmax(heat: Tensor) -> Tensor:
    """(R, 1, h, w) -> (R, 2) x, y as the search decodes its start (models.codec.decode_argmax;
    no gradient flows through a decoded position)."""
    pos, _ = decode_argmax(heat[:, 0].detach().float().cpu().numpy())
    return torch.from_numpy(pos).float()


def search_candidates(
    gamma: ScioNet,
    phi: ScioNet,
    ctx: tuple[Tensor, ...],
    b: GroupBatch,
    cfg: ScioTrainConfig,
    sigma: float,
    gen: torch.Generator,
) -> Tensor:
    """Cross-entropy of the search's decision over the candidates it really compares: a lattice
    around its start (Φ's D or the backbone's D), the two estimates themselves as hard
    negatives, and the true D; all candidates of all rows in one Γ head batch."""
    h, w = b.hb.shape[-2], b.hb.shape[-1]
    r = len(b.xd)
    with torch.no_grad():
        phi_d = heatmap_argmax(phi(b.hb, b.hc, b.ha, b.f, b.group))
        bb_d = heatmap_argmax(b.hd)
    start = torch.where((torch.rand(r, generator=gen) < 0.5)[:, None], phi_d, bb_d)
    lattice = torch.as_tensor(grid_offsets(cfg.candidates_radius, 1.0), dtype=torch.float32)
    k = min(cfg.candidates_sample, len(lattice))
    pick = torch.cat([torch.zeros(1, dtype=torch.long),
                      1 + torch.randperm(len(lattice) - 1, generator=gen)[: k - 1]])  # fmt: skip
    cand = torch.cat(
        [start[:, None] + lattice[pick][None], bb_d[:, None], phi_d[:, None], b.xd[:, None]], 1
    )
    cand = torch.stack([cand[..., 0].clamp(0, w - 1), cand[..., 1].clamp(0, h - 1)], -1)
    c = cand.shape[1]
    rows = torch.arange(r).repeat_interleave(c)
    pred = gamma.head(ctx, render(cand.reshape(-1, 2), (h, w), sigma), rows)
    s = constraint_loss(b.ha[rows], pred, cfg.score).reshape(r, c)
    logp = torch.log_softmax(-s / cfg.candidates_tau, dim=1)
    if cfg.candidates_sigma <= 0:  # the truth (last column) must beat every real candidate
        return -logp[:, -1].mean()
    d2 = ((cand - b.xd[:, None]) ** 2).sum(-1)
    target = torch.softmax(-d2 / (2 * cfg.candidates_sigma**2), dim=1)
    return -(target * logp).sum(1).mean()


@contextmanager
def frozen(net: ScioNet) -> Iterator[None]:
    """The partner network of an alternating step: no gradients, and eval mode, so its
    BatchNorm running statistics stay put and its feature dropout does not fire; gradients
    still flow through it to the network that learns. Restores train mode afterwards."""
    was = net.training
    net.requires_grad_(False)
    net.eval()
    try:
        yield
    finally:
        net.requires_grad_(True)
        net.train(was)


# the candidates of a radius-2 grid search (what the listwise term trains Γ to rank)
LATTICE = torch.as_tensor(grid_offsets(2.0, 1.0), dtype=torch.float32)


def listwise(
    gamma: ScioNet,
    ctx: tuple[Tensor, ...],
    b: GroupBatch,
    cfg: ScioTrainConfig,
    sigma: float,
    gen: torch.Generator,
) -> Tensor:
    """Cross-entropy of the search's choice: candidates on the search lattice around a start
    jittered off the truth; target = softmax(-d²/(2·0.5²)) of their distance to the truth,
    prediction = softmax(-s/τ) of their self-constraint losses."""
    h, w = b.hb.shape[-2], b.hb.shape[-1]
    r, c = len(b.xd), len(LATTICE)
    start = b.xd + torch.randn(r, 2, generator=gen) * cfg.listwise_jitter
    cand = start[:, None, :] + LATTICE[None]  # (R, C, 2)
    cand = torch.stack([cand[..., 0].clamp(0, w - 1), cand[..., 1].clamp(0, h - 1)], -1)
    rows = torch.arange(r).repeat_interleave(c)
    pred = gamma.head(ctx, render(cand.reshape(-1, 2), (h, w), sigma), rows)
    s = constraint_loss(b.ha[rows], pred, cfg.score).reshape(r, c)
    target = torch.softmax(-((cand - b.xd[:, None]) ** 2).sum(-1) / (2 * 0.5**2), dim=1)
    return -(target * torch.log_softmax(-s / cfg.listwise_tau, dim=1)).sum(1).mean()


@torch.no_grad()
def sensitivity(
    gamma: ScioNet, data: BackboneOutputs, spec: KeypointSpec, sigma: float, score: str = "l2"
) -> dict[str, Any]:
    """Γ's self-constraint loss at the true D and at D displaced by 1, 2, 4 px (8 directions):
    means per group, and how often the displaced loss is larger (ranking accuracy)."""
    gamma.eval()
    hw = (data.heatmaps.shape[-2], data.heatmaps.shape[-1])
    dirs = torch.tensor([[math.cos(a), math.sin(a)] for a in np.arange(8) * math.pi / 4])
    per: dict[str, dict[str, list[float]]] = {g.name: {} for g in spec.groups}
    for start in range(0, len(data), 256):
        b = group_rows(data, torch.arange(start, min(start + 256, len(data))), spec, sigma)
        if b is None:
            continue
        ctx = gamma.context(b.hb, b.hc, b.f, b.group)
        s0 = constraint_loss(b.ha, gamma.head(ctx, render(b.xd, hw, sigma)), score)
        rows: dict[str, Tensor] = {"0": s0}
        wins: dict[str, Tensor] = {}
        for radius in DISPLACEMENTS:
            offs = []
            for d in dirs:
                x = b.xd + d * radius
                x = torch.stack([x[:, 0].clamp(0, hw[1] - 1), x[:, 1].clamp(0, hw[0] - 1)], 1)
                offs.append(constraint_loss(b.ha, gamma.head(ctx, render(x, hw, sigma)), score))
            s = torch.stack(offs, 1)  # (R, 8)
            rows[f"{radius:g}"] = s.mean(1)
            wins[f"{radius:g}"] = (s > s0[:, None]).float().mean(1)
        for gi, g in enumerate(spec.groups):
            m = b.group == gi
            for k, v in rows.items():
                per[g.name].setdefault(f"loss@{k}", []).extend(v[m].tolist())
            for k, v in wins.items():
                per[g.name].setdefault(f"rank_acc@{k}", []).extend(v[m].tolist())
    table = {g: {k: float(np.mean(v)) for k, v in d.items() if v} for g, d in per.items()}
    keys = sorted({k for d in per.values() for k in d})
    overall = {k: float(np.mean([x for d in per.values() for x in d.get(k, [])])) for k in keys}
    return {
        "per_group": table,
        "overall": overall,
        "rows": int(sum(len(d.get("loss@0", [])) for d in per.values())),
    }


def format_sensitivity(report: dict[str, Any]) -> str:
    cols = ["loss@0", "loss@1", "loss@2", "loss@4", "rank_acc@1", "rank_acc@2", "rank_acc@4"]
    lines = ["group        " + "  ".join(f"{c:>10}" for c in cols)]
    for name, d in [*report["per_group"].items(), ("ALL", report["overall"])]:
        lines.append(f"{name:<12} " + "  ".join(f"{d.get(c, float('nan')):>10.4f}" for c in cols))
    return "\n".join(lines)


def scio_spec(spec: KeypointSpec, groups: str) -> KeypointSpec:
    """The spec whose groups the SCIO networks learn: DESIGN.md's, or the proximal variant."""
    if groups == "design":
        return spec
    if groups == "proximal":
        return spec.with_groups(proximal_groups(spec))
    raise ValueError(f"groups must be 'design' or 'proximal', not {groups!r}")


def load_backbone(path: str | Path) -> tuple[Backbone, BackboneTrainConfig]:
    ckpt = read_checkpoint(path)
    train_cfg = ckpt.meta.get("train_config")
    if train_cfg is None:
        raise ValueError(
            f"{path}: no train_config in its meta; train scio needs a backbone run's checkpoint"
        )
    cfg = from_dict(BackboneTrainConfig, train_cfg)
    model = build_backbone(ckpt.config)  # type: ignore[arg-type]
    model.load_state_dict(ckpt.state_dict, strict=True)
    return model.eval(), cfg


def net_config(
    cfg: ScioTrainConfig, feature_channels: int, groups: tuple[str, ...] | None = None
) -> ScioNetConfig:
    """The architecture of Φ and Γ that a training configuration describes (feature dropout
    aside, which differs between the two); `groups` None: ScioNetConfig's default (COCO)."""
    net = ScioNetConfig(
        feature_channels=feature_channels,
        context_widths=cfg.context_widths,
        head_widths=cfg.head_widths,
        context_blocks=cfg.context_blocks,
        head_start_level=cfg.head_start_level,
        context_start_level=cfg.context_start_level,
        context_stem=cfg.context_stem,
    )
    return net if groups is None else replace(net, groups=groups)


def train_scio(
    backbone_ckpt: str | Path, out_dir: str | Path, cfg: ScioTrainConfig, resume: bool = False
) -> dict[str, Any]:
    fresh = coco_folder(cfg.data) if cfg.data else None  # checked before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    backbone, bcfg = load_backbone(backbone_ckpt)
    spec = scio_spec(get_spec(bcfg.data.spec), cfg.groups)
    codec = codec_for(replace(bcfg, unbiased_targets=True))
    sigma = codec.sigma
    paths = resolve_data(bcfg.data, Path(backbone_ckpt).resolve().parent / "data")
    train_ann, train_images = fresh or (paths.train_ann, paths.train_images)
    norm = normalization_of(backbone)
    train_ds = TopDownDataset(
        CocoKeypoints(train_ann, spec), train_images, codec, norm, cfg.augment, cfg.seed
    )
    flip = spec.flip_index if cfg.flip_test else None
    train = collect_outputs(
        backbone,
        train_ds,
        cfg.passes,
        64,
        limit=cfg.max_train_persons or None,
        desc="train backbone outputs",
        flip_index=flip,
    )
    val = None
    if paths.val_ann is not None and paths.val_images is not None:
        val_ds = TopDownDataset(CocoKeypoints(paths.val_ann, spec), paths.val_images, codec, norm)
        val = collect_outputs(
            backbone,
            val_ds,
            1,
            64,
            limit=cfg.val_persons,
            desc="val backbone outputs",
            flip_index=flip,
        )
    net_cfg = net_config(cfg, backbone.feature_channels, tuple(g.name for g in spec.groups))
    phi = ScioNet(replace(net_cfg, feature_dropout=cfg.phi_feature_dropout))
    gamma = ScioNet(replace(net_cfg, feature_dropout=cfg.gamma_feature_dropout))
    opt_phi = torch.optim.Adam(phi.parameters(), lr=cfg.lr)
    opt_gamma = torch.optim.Adam(gamma.parameters(), lr=cfg.lr)
    start_epoch = 0
    if resume and (out / "scio_state.pt").exists():
        start_epoch = _resume(out, phi, gamma, opt_phi, opt_gamma)
    if val is not None and start_epoch == 0:
        before = sensitivity(gamma, val, spec, sigma, cfg.score)
        log.info("Γ sensitivity before training:\n%s", format_sensitivity(before))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(start_epoch, cfg.epochs):
        stats = _epoch(phi, gamma, opt_phi, opt_gamma, train, spec, cfg, sigma, gen, epoch)
        if val is not None:
            stats["val"] = _val_losses(phi, gamma, val, spec, sigma)
        history.append(stats)
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, json.dumps(stats))
        meta = {
            "scio_train_config": to_plain(cfg),
            "backbone": str(backbone_ckpt),
            "epoch": epoch + 1,
        }
        save_checkpoint(out / "phi.pt", phi, {**meta, "role": "phi"})
        save_checkpoint(out / "gamma.pt", gamma, {**meta, "role": "gamma"})
        atomic_save(
            {"epoch": epoch + 1, "phi": opt_phi.state_dict(), "gamma": opt_gamma.state_dict()},
            out / "scio_state.pt",
        )
    report: dict[str, Any] = {
        "groups": [g.name for g in spec.groups],
        "group_members": spec.to_dict()["groups"],
        "sigma": sigma,
        "score": cfg.score,
        "net": to_plain(net_cfg),
        "train_config": to_plain(cfg),
        "backbone": str(backbone_ckpt),
        "train_persons": len(train) // max(cfg.passes, 1),
        "history": history,
    }
    if val is not None:
        report["sensitivity"] = sensitivity(gamma, val, spec, sigma, cfg.score)
        print(
            "Γ sensitivity on the validation split: the self-constraint loss at the true D and "
            "at D displaced\nby 1, 2, 4 heatmap px (8 directions); rank_acc = share of displaced "
            "positions that score worse."
        )
        print(format_sensitivity(report["sensitivity"]))
    (out / "scio.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _epoch(
    phi: ScioNet,
    gamma: ScioNet,
    opt_phi: torch.optim.Optimizer,
    opt_gamma: torch.optim.Optimizer,
    data: BackboneOutputs,
    spec: KeypointSpec,
    cfg: ScioTrainConfig,
    sigma: float,
    gen: torch.Generator,
    epoch: int,
) -> dict[str, Any]:
    phi.train()
    gamma.train()
    order = torch.randperm(len(data), generator=gen)
    steps = len(order) // cfg.batch_size
    sums = {"phi": 0.0, "gamma": 0.0, "rank": 0.0, "listwise": 0.0, "candidates": 0.0}
    counts = {"phi": 0, "gamma": 0}
    bar = progress(range(steps), desc=f"scio epoch {epoch + 1}/{cfg.epochs}")
    for step in bar:
        b = group_rows(
            data, order[step * cfg.batch_size : (step + 1) * cfg.batch_size], spec, sigma
        )
        if b is None:
            continue
        if step % 2 == 0:  # Φ learns, Γ frozen
            with frozen(gamma):
                loss = phi_step(phi, gamma, b)
                opt_phi.zero_grad(set_to_none=True)
                loss.backward()
                opt_phi.step()
            sums["phi"] += loss.item()
            counts["phi"] += 1
        else:  # Γ learns, Φ frozen
            with frozen(phi):
                loss, extra = gamma_step(gamma, phi, b, cfg, sigma, gen)
                opt_gamma.zero_grad(set_to_none=True)
                loss.backward()
                opt_gamma.step()
            sums["gamma"] += loss.item()
            sums["rank"] += extra["rank"]
            sums["listwise"] += extra.get("listwise", 0.0)
            sums["candidates"] += extra.get("candidates", 0.0)
            counts["gamma"] += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"SCIO loss became {loss.item()} at epoch {epoch + 1}")
        bar.set_postfix(
            phi=sums["phi"] / max(counts["phi"], 1), gamma=sums["gamma"] / max(counts["gamma"], 1)
        )
    return {
        "epoch": epoch + 1,
        "phi_loss": sums["phi"] / max(counts["phi"], 1),
        "gamma_loss": sums["gamma"] / max(counts["gamma"], 1),
        "rank_loss": sums["rank"] / max(counts["gamma"], 1),
        "listwise_loss": sums["listwise"] / max(counts["gamma"], 1),
        "candidates_loss": sums["candidates"] / max(counts["gamma"], 1),
    }


@torch.no_grad()
def _val_losses(
    phi: ScioNet, gamma: ScioNet, val: BackboneOutputs, spec: KeypointSpec, sigma: float
) -> dict[str, float]:
    """Held-out error of Φ and Γ against ground truth, next to the backbone's own heatmaps."""
    phi.eval()
    gamma.eval()
    tot = {"phi": 0.0, "gamma": 0.0, "backbone_d": 0.0, "backbone_a": 0.0}
    n = 0
    for start in range(0, len(val), 256):
        b = group_rows(val, torch.arange(start, min(start + 256, len(val))), spec, sigma)
        if b is None:
            continue
        r = len(b.group)
        tot["phi"] += float(sq(phi(b.hb, b.hc, b.ha, b.f, b.group), b.gt_d)) * r
        tot["gamma"] += float(sq(gamma(b.hb, b.hc, b.hd, b.f, b.group), b.gt_a)) * r
        tot["backbone_d"] += float(sq(b.hd, b.gt_d)) * r
        tot["backbone_a"] += float(sq(b.ha, b.gt_a)) * r
        n += r
    return {k: v / max(n, 1) for k, v in tot.items()}


def _resume(
    out: Path,
    phi: ScioNet,
    gamma: ScioNet,
    opt_phi: torch.optim.Optimizer,
    opt_gamma: torch.optim.Optimizer,
) -> int:
    state = torch.load(out / "scio_state.pt", map_location="cpu", weights_only=True)
    for net, name in ((phi, "phi.pt"), (gamma, "gamma.pt")):
        ckpt = read_checkpoint(out / name)
        if int(ckpt.meta.get("epoch", -1)) != int(state["epoch"]):
            raise RuntimeError(f"{out}: {name} and scio_state.pt are from different epochs")
        net.load_state_dict(ckpt.state_dict, strict=True)
    opt_phi.load_state_dict(state["phi"])
    opt_gamma.load_state_dict(state["gamma"])
    log.info("resumed SCIO training at epoch %d", int(state["epoch"]))
    return int(state["epoch"])
