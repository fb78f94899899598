"""`scio-pose export`: trained runs -> one model bundle.

Takes the backbone checkpoint of `train backbone`, optionally the SCIO folder of `train scio`
and the detector folder of `train detector`, exports each to ONNX with a parity check against
torch, and writes the bundle with sha256s and provenance (data, commands, commit, metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.bundle import DetectorInfo
    from models.keypoints import KeypointSpec
    from models.pairs import PairSplit
    from training.bundle_export import ScioExport

HELP = "export trained models into a bundle (ONNX, parity-checked, with provenance)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP + (
        ". Every ONNX file is checked against torch on random inputs in fp32: max |ONNX "
        "Runtime - torch| at most 1e-4 of the output's own scale (max |torch|), per output; "
        "the differences are printed and recorded in bundle.json."
    )
    parser.add_argument("--backbone", type=Path, required=True, help="train backbone checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--scio", type=Path, help="train scio output folder (phi.pt, gamma.pt)")
    parser.add_argument(
        "--detector", type=Path, help="train detector output folder (detector.onnx/.json)"
    )
    parser.add_argument(
        "--search", type=Path, help="JSON of SCIO search settings (default: the engine's)"
    )
    parser.add_argument("--name", default="", help="bundle name (default: the run folder's)")
    parser.add_argument("--version", default="1")
    parser.add_argument("--decode", default="argmax", choices=["argmax", "dark"])
    parser.add_argument(
        "--flip-test",
        action="store_true",
        help="run the flip test by default (requests without `flip` get it; flip=false turns "
        "it off); fit the SCIO settings on a bundle exported with it",
    )
    parser.add_argument(
        "--flip-shift",
        type=parse_flip_shift,
        default="exact",
        metavar="PX|exact",
        help="heatmap pixels the flip test moves the mirrored crop's heatmaps right before "
        "averaging (bundle.json pose.flip_shift): 'exact' (default) undoes the flip exactly for "
        "the network's stride, (s - 1) / s: 0.5 for a 128x96 input with 64x48 heatmaps, 0.75 at "
        "stride 4; 1 is the official code's one pixel (what `convert` writes for official "
        "weights)",
    )
    parser.add_argument(
        "--oks-nms",
        type=float,
        help="OKS above which the service keeps only the better-scored of two persons' poses "
        "(default: the detector's, else the official 0.9); with --detector",
    )
    parser.add_argument(
        "--min-person-score",
        type=float,
        help="persons the detector finds scoring below this are not answered unless a request "
        "says otherwise (default 0: all); with --detector",
    )
    parser.add_argument(
        "--pair-split",
        type=Path,
        help="JSON with the left/right pairs to split where they decode on one spot "
        "(`benchmarks/pair_split.py --choose`'s file; default: none)",
    )
    parser.add_argument(
        "--provenance",
        type=Path,
        action="append",
        default=[],
        help="JSON file merged into bundle.json's provenance (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    if args.oks_nms is not None and (args.detector is None or not 0 < args.oks_nms <= 1):
        print("scio-pose export: --oks-nms needs --detector and a value in (0, 1]", file=sys.stderr)
        return 2
    if args.min_person_score is not None and (
        args.detector is None or not 0 <= args.min_person_score <= 1
    ):
        print(
            "scio-pose export: --min-person-score needs --detector and a value in [0, 1]",
            file=sys.stderr,
        )
        return 2
    bundle = export_bundle(
        backbone=args.backbone,
        out=args.out,
        scio_dir=args.scio,
        detector_dir=args.detector,
        search_file=args.search,
        name=args.name or args.backbone.resolve().parent.name,
        version=args.version,
        decode=args.decode,
        flip_test=args.flip_test,
        flip_shift=args.flip_shift,
        oks_nms=args.oks_nms,
        min_person_score=args.min_person_score,
        pair_split=read_pair_split(args.pair_split) if args.pair_split else None,
        extra=[json.loads(p.read_text()) for p in args.provenance],
        command=args.command_line,
    )
    print(f"wrote bundle {bundle.root} with {', '.join(sorted(bundle.manifest.files))}")
    return 0


def export_bundle(
    backbone: Path,
    out: Path,
    scio_dir: Path | None = None,
    detector_dir: Path | None = None,
    search_file: Path | None = None,
    name: str = "bundle",
    version: str = "1",
    decode: str = "argmax",
    flip_test: bool = False,
    flip_shift: float | str = "exact",
    oks_nms: float | None = None,
    pair_split: PairSplit | None = None,
    min_person_score: float | None = None,
    extra: list[dict[str, Any]] | None = None,
    command: str = "",
) -> Any:
    import tempfile
    from dataclasses import replace

    from models.codec import resolve_flip_shift
    from models.keypoints import get_spec
    from training.bundle_export import BundleSpec, build_bundle
    from training.train_backbone import codec_for
    from training.train_scio import load_backbone

    if oks_nms is not None and detector_dir is None:
        raise ValueError("--oks-nms is the detector's setting: it needs --detector")
    if min_person_score is not None and detector_dir is None:
        raise ValueError("--min-person-score is the detector's setting: it needs --detector")
    model, cfg = load_backbone(backbone)
    spec = get_spec(cfg.data.spec)
    if pair_split is not None:
        pair_split.check(spec)
    codec = codec_for(cfg)
    # our own training mirrors as the official code: "exact" undoes it for the stride
    shift = resolve_flip_shift(flip_shift, codec.input_hw[1], codec.heatmap_hw[1])
    provenance: dict[str, Any] = {
        "backbone": {"checkpoint": str(backbone), "arch": cfg.arch, "data": _data_note(cfg)},
        "command": command,
    }
    with tempfile.TemporaryDirectory(prefix="scio-export-") as tmp:
        scio: ScioExport | None = None
        if scio_dir is not None:
            wanted = json.loads(search_file.read_text()) if search_file else {}
            scio, spec, provenance["scio"] = read_scio_run(
                scio_dir, spec, codec.heatmap_hw, Path(tmp), wanted, search_file
            )
        det_onnx, det_info = None, None
        if detector_dir is not None:
            det_onnx, det_info, provenance["detector"] = read_detector_run(detector_dir)
            if oks_nms is not None:
                det_info = replace(det_info, oks_nms=oks_nms)
            if min_person_score is not None:
                det_info = replace(det_info, min_person_score=min_person_score)
        for e in extra or []:
            provenance.update(e)
        return build_bundle(
            out,
            model,
            BundleSpec(
                name=name,
                version=version,
                arch=cfg.arch,
                spec=spec,
                sigma=codec.sigma,
                decode=decode,
                flip_test=flip_test,
                flip_shift=shift,
                pair_split=pair_split,
                detector_onnx=det_onnx,
                detector_info=det_info,
                scio=scio,
                provenance=provenance,
            ),
        )


def read_scio_run(
    scio_dir: Path,
    spec: KeypointSpec,
    heatmap_hw: tuple[int, int],
    tmp: Path,
    wanted: dict[str, Any],
    search_file: Path | None,
) -> tuple[ScioExport, KeypointSpec, dict[str, Any]]:
    """A `train scio` output folder as a bundle's SCIO part: Γ and Φ exported to ONNX in `tmp`
    (each checked against torch), the spec with the groups they learned, the search settings
    `wanted` (from `search_file`, if any) with the score Γ was trained for, and the provenance
    record."""
    from models.checkpoint import load_scio_net
    from models.keypoints import KeypointSpec
    from models.scio_search import ScioSearchConfig
    from training.bundle_export import ScioExport
    from training.scio_export import export_gamma_checked, export_phi_checked

    gamma = load_scio_net(scio_dir / "gamma.pt")
    phi = load_scio_net(scio_dir / "phi.pt")
    report = _read_json(scio_dir / "scio.json")
    if "group_members" in report:  # the assignment Φ and Γ learned travels with them
        spec = KeypointSpec.from_dict({**spec.to_dict(), "groups": report["group_members"]})
    names = tuple(g.name for g in spec.groups)
    if gamma.config.groups != names:
        raise ValueError(f"{scio_dir}: Γ was trained for groups {gamma.config.groups}")
    ctx, head, d_gamma = export_gamma_checked(gamma, tmp, heatmap_hw)
    phi_path, d_phi = export_phi_checked(phi, tmp, heatmap_hw)
    print(f"parity SCIO: max abs difference Γ {d_gamma:.2e}, Φ {d_phi:.2e}")
    trained = report.get("score", "l2")  # the loss Γ was trained for
    if wanted.get("score", trained) != trained:
        raise ValueError(
            f"{search_file}: score {wanted['score']!r}, but Γ was trained for {trained!r}"
        )
    search = ScioSearchConfig.from_dict({**wanted, "score": trained})
    scio = ScioExport(
        ctx,
        head,
        phi_path,
        {
            "groups": list(names),
            "group_members": spec.to_dict()["groups"],
            "search": search.to_dict(),
            "net": report.get("net"),
            "sensitivity": (report.get("sensitivity") or {}).get("overall"),
            "parity_max_abs_diff": {"gamma": d_gamma, "phi": d_phi},
        },
    )
    return scio, spec, {"folder": str(scio_dir), "train_config": report.get("train_config")}


def parse_flip_shift(v: str) -> float | str:
    """--flip-shift: 'exact' (derived from the network's stride, models.codec.resolve_flip_shift)
    or heatmap px in [0, 1]."""
    from models.codec import check_flip_shift

    if v.strip().lower() == "exact":
        return "exact"
    try:
        return check_flip_shift(float(v))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'exact' or a number in [0, 1], not {v!r}") from None


def read_pair_split(path: Path) -> PairSplit | None:
    """The settings in a `benchmarks/pair_split.py --choose` file (its `pair_split`, which may
    be null: no split), or such settings on their own."""
    from models.pairs import PairSplit

    d = _read_json(path)
    if "pair_split" in d:
        d = d["pair_split"]
    return PairSplit.from_dict(d) if d else None


def read_detector_run(detector_dir: Path) -> tuple[Path, DetectorInfo, dict[str, Any]]:
    """A `train detector` output folder: its detector.onnx, the bundle's `DetectorInfo` from
    detector.json, and that file as the bundle's provenance records it."""
    from models.bundle import DetectorInfo

    meta = _read_json(detector_dir / "detector.json")
    onnx_path = detector_dir / "detector.onnx"
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} is missing")
    return (
        onnx_path,
        DetectorInfo.from_dict(meta),
        {k: v for k, v in meta.items() if k != "input_hw"},
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _data_note(cfg: Any) -> dict[str, Any]:
    from training.config import to_plain

    return dict(to_plain(cfg.data))
