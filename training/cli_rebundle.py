"""`scio-pose rebundle`: a bundle from another one with some of its parts replaced, for when the
training runs behind a bundle are gone (or need not run again) and one part changes: another
detector, Φ and Γ from another `train scio` run on the same backbone (with search settings
fitted for them), refitted SCIO search settings, the left/right pairs split where they decode on one
spot (models.pairs), the SCIO graphs rewritten as `export` now writes them
(the context stem's BatchNorm folded; the feature maps taken once per person), or INT8 copies of
the backbone and the detector added for CPU serving (training.quantize). A new detector drops
the old one's INT8 copy (unless `--int8` makes a new one).

Every file not replaced is copied byte for byte (its sha256 re-checked on the way in). The
provenance keeps the source bundle's record and gains one `commands` entry for this step (the
command line, the commit, what changed, and any note); a replaced detector's own record
(`detector.json`) replaces the old one under `provenance.detector`. The output is written
atomically and may be the source bundle itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.cli_export import parse_flip_shift

if TYPE_CHECKING:
    from models.bundle import DetectorInfo

HELP = (
    "a bundle from another with its detector, person score, SCIO networks, search settings or "
    "graphs, left/right pair split or flip-test shift replaced, or INT8 copies added"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = HELP + (
        ". Files not replaced are copied unchanged; bundle.json's provenance gains a record of "
        "this step. The output may be the source bundle (written atomically)."
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the source bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument(
        "--detector",
        type=Path,
        help="a `train detector` output folder (detector.onnx, detector.json) to use instead",
    )
    parser.add_argument(
        "--oks-nms",
        type=float,
        help="with --detector: the OKS-NMS threshold (default: the source bundle's)",
    )
    parser.add_argument(
        "--min-person-score",
        type=float,
        help="persons the detector finds scoring below this are not answered unless a request "
        "says otherwise (bundle.json detector.min_person_score; `benchmarks/pose_answers.py "
        "--choose`'s; default: the source bundle's)",
    )
    parser.add_argument(
        "--person-score",
        type=Path,
        help="JSON with a calibrated person score for the persons the detector finds, the "
        "detector threshold and the minimum score to go with it (`benchmarks/person_score.py "
        "--choose`'s file; bundle.json detector.person_score, score_threshold, min_person_score)",
    )
    parser.add_argument(
        "--flip-min-score",
        type=float,
        help="where the flip test is on by default: the detector's boxes scoring below this run "
        "without it, one crop instead of two (bundle.json detector.flip_min_score; 0: every box "
        "flips; a --person-score file brings the one it was fitted with)",
    )
    parser.add_argument(
        "--scio",
        type=Path,
        metavar="RUN",
        help="a `train scio` output folder (phi.pt, gamma.pt, scio.json) trained on this "
        "bundle's backbone: its Φ and Γ replace the bundle's (needs --search: the bundle's "
        "search settings and confidence were fitted on the networks replaced)",
    )
    parser.add_argument(
        "--search",
        type=Path,
        help="JSON of SCIO search settings to use instead (e.g. scio_probes --fit's)",
    )
    parser.add_argument(
        "--pair-split",
        type=Path,
        help="JSON with the left/right pairs to split where they decode on one spot "
        "(`benchmarks/pair_split.py --choose`'s file; its null removes the split)",
    )
    parser.add_argument(
        "--flip-shift",
        type=parse_flip_shift,
        metavar="PX|exact",
        help="heatmap pixels the flip test moves the mirrored crop's heatmaps right before "
        "averaging (bundle.json pose.flip_shift): 'exact' for the backbone's stride, (s - 1) / "
        "s (`export`'s default since stop 44; 0.5 for the 64x48-from-128x96 testbed), or a "
        "number (1: the official one pixel, what official weights were evaluated with)",
    )
    parser.add_argument(
        "--fold-batchnorm",
        action="store_true",
        help="fold the SCIO context stem's BatchNorm into its convolutions (as `export` writes "
        "the graphs; for bundles exported before it did), each graph checked against the "
        "source's on random inputs",
    )
    parser.add_argument(
        "--person-features",
        action="store_true",
        help="make Φ and Γ's context take each person's feature map once, with a person_index "
        "input (the row gather moved inside the graph, after the features' 1x1 convolution), as "
        "`export` writes them; checked against the source's graphs on random inputs",
    )
    parser.add_argument(
        "--int8",
        type=Path,
        metavar="DATA",
        help="add INT8 copies of the backbone and of the detector (pose_int8.onnx and "
        "detector_int8.onnx, which the service runs where the backbone runs on a CPU with 8-bit "
        "dot products), calibrated on this COCO-format folder (person_keypoints.json, images/; "
        "e.g. a tuning split from `scio-pose synth`): the backbone on its annotated persons, the "
        "detector on its images; each checked against its float graph on a quarter of them",
    )
    parser.add_argument(
        "--int8-images",
        type=int,
        default=100,
        help="with --int8: images of DATA to use (default 100: 75 calibrate, 25 check)",
    )
    parser.add_argument("--note", default="", help="why, for the provenance record")
    parser.add_argument(
        "--evaluation",
        type=Path,
        nargs="+",
        help="`scio-pose evaluate --out` result files of the new bundle: they replace the "
        "provenance's evaluation results (as the build records them), with --evaluation-data "
        "naming the split",
    )
    parser.add_argument(
        "--evaluation-data", default="", help="with --evaluation: how the split was made"
    )
    parser.add_argument(
        "--provenance",
        type=Path,
        action="append",
        default=[],
        help="JSON file whose keys replace the provenance's (repeatable), e.g. a new "
        "`evaluation` of the bundle with its new detector",
    )


FLIP_CHANGE = "flip test for boxes scoring >= {}"


def run(args: argparse.Namespace) -> int:
    def outside(v: float | None) -> bool:
        return v is not None and not 0 <= v <= 1

    refused = (
        (
            args.oks_nms is not None and (args.detector is None or not 0 < args.oks_nms <= 1),
            "--oks-nms needs --detector and a value in (0, 1]",
        ),
        (outside(args.min_person_score), "--min-person-score must lie in [0, 1]"),
        (
            args.person_score is not None and args.min_person_score is not None,
            "--person-score brings its own minimum; not with --min-person-score",
        ),
        (outside(args.flip_min_score), "--flip-min-score must lie in [0, 1]"),
        (
            args.person_score is not None and args.flip_min_score is not None,
            "--person-score brings the flip test's minimum box score it was fitted with; not "
            "with --flip-min-score",
        ),
        (args.int8_images < 4, "--int8-images must be at least 4"),
        (
            args.scio is not None and args.search is None,
            "--scio needs --search: the bundle's search settings were fitted on its networks",
        ),
    )
    for bad, why in refused:
        if bad:
            print(f"scio-pose rebundle: {why}", file=sys.stderr)
            return 2
    if not (
        args.detector
        or args.min_person_score is not None
        or args.person_score
        or args.flip_min_score is not None
        or args.int8
        or args.search
        or args.scio
        or args.pair_split
        or args.flip_shift is not None
        or args.fold_batchnorm
        or args.person_features
        or args.provenance
        or args.evaluation
    ):
        print(
            "scio-pose rebundle: nothing to replace (--detector, --min-person-score, "
            "--person-score, --flip-min-score, --int8, --scio, --search, --pair-split, "
            "--flip-shift, --fold-batchnorm, --person-features, --evaluation or --provenance)",
            file=sys.stderr,
        )
        return 2
    from models.bundle import BundleError

    try:
        changes = rebundle(
            args.bundle,
            args.out,
            detector_dir=args.detector,
            oks_nms=args.oks_nms,
            min_person_score=args.min_person_score,
            person_score_file=args.person_score,
            flip_min_score=args.flip_min_score,
            search_file=args.search,
            scio_dir=args.scio,
            pair_split_file=args.pair_split,
            flip_shift=args.flip_shift,
            fold_batchnorm=args.fold_batchnorm,
            person_features=args.person_features,
            int8_data=args.int8,
            int8_images=args.int8_images,
            note=args.note,
            command=getattr(args, "command_line", ""),
            extra=[json.loads(p.read_text()) for p in args.provenance]
            + ([_evaluation(args.evaluation, args.evaluation_data)] if args.evaluation else []),
        )
    except (BundleError, OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        print(f"scio-pose rebundle: {e}", file=sys.stderr)
        return 2
    print(f"wrote bundle {args.out}: {'; '.join(changes)}")
    return 0


def read_person_score(path: Path, info: DetectorInfo) -> DetectorInfo:
    """`info` with `benchmarks/person_score.py --choose`'s file applied: `person_score` (a model,
    or null for the official rescoring) and, where given, `detector_threshold`,
    `min_person_score` and `flip_min_score` (the flip rule its answers were collected with: the
    model's keypoint-score features depend on it). ValueError on a malformed file or values out
    of range."""
    from dataclasses import replace

    from models.postprocess import PersonScoreModel

    d = json.loads(path.read_text())
    if not isinstance(d, dict) or "person_score" not in d:
        raise ValueError(f"{path}: need a JSON object with person_score (a model or null)")
    try:
        model = PersonScoreModel.from_dict(d["person_score"]) if d["person_score"] else None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed person_score ({e!r})") from None
    return replace(  # DetectorInfo checks the values
        info,
        person_score=model,
        score_threshold=float(d.get("detector_threshold", info.score_threshold)),
        min_person_score=float(d.get("min_person_score", info.min_person_score)),
        flip_min_score=float(d.get("flip_min_score", info.flip_min_score)),
    )


def rebundle(
    bundle_dir: Path,
    out: Path,
    detector_dir: Path | None = None,
    oks_nms: float | None = None,
    min_person_score: float | None = None,
    person_score_file: Path | None = None,
    flip_min_score: float | None = None,
    search_file: Path | None = None,
    scio_dir: Path | None = None,
    pair_split_file: Path | None = None,
    flip_shift: float | str | None = None,
    fold_batchnorm: bool = False,
    person_features: bool = False,
    int8_data: Path | None = None,
    int8_images: int = 100,
    note: str = "",
    command: str = "",
    extra: list[dict[str, Any]] | None = None,
) -> list[str]:
    """Write the new bundle (module doc); returns what changed, one line each."""
    import tempfile
    from dataclasses import replace

    from models.bundle import (
        DETECTOR,
        DETECTOR_INT8,
        GAMMA_CONTEXT,
        GAMMA_HEAD,
        PHI,
        POSE,
        POSE_INT8,
        load_bundle,
        write_bundle,
    )
    from models.scio_search import ScioSearchConfig
    from training.bundle_export import git_commit
    from training.cli_export import read_detector_run, read_pair_split, read_scio_run

    source = load_bundle(bundle_dir)  # checks every file's sha256
    manifest = source.manifest
    sources = {role: source.root / e.path for role, e in manifest.files.items()}
    provenance = json.loads(json.dumps(manifest.provenance))  # a deep copy
    changes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scio-rebundle-") as tmp:
        if detector_dir is not None:
            onnx_path, info, provenance["detector"] = read_detector_run(detector_dir)
            keep = (
                oks_nms
                if oks_nms is not None
                else (manifest.detector.oks_nms if manifest.detector is not None else None)
            )
            if keep is not None:
                info = replace(info, oks_nms=keep)
            old = manifest.detector
            if old is not None and old.person_score is not None:
                # fitted on the old detector's box scores, and its minimum is a probability
                changes.append("the old detector's person score and minimum dropped")
            elif old is not None:
                info = replace(info, min_person_score=old.min_person_score)
            if old is not None and old.flip_min_score > 0:
                changes.append("the flip test's minimum box score reset to 0 (every box flips)")
            manifest = replace(manifest, detector=info)
            sources[DETECTOR] = onnx_path
            if sources.pop(DETECTOR_INT8, None) is not None and int8_data is None:
                provenance.pop("int8_detector", None)
                changes.append("the old detector's INT8 copy dropped")
            changes.append(f"detector from {detector_dir} (OKS-NMS {info.oks_nms})")
        for flag, field, value, change in (
            ("--min-person-score", "min_person_score", min_person_score, "minimum person score {}"),
            ("--flip-min-score", "flip_min_score", flip_min_score, FLIP_CHANGE),
        ):
            if value is None:
                continue
            if manifest.detector is None:
                raise ValueError(f"{bundle_dir} has no detector: {flag} needs one")
            setting: dict[str, Any] = {field: value}
            manifest = replace(manifest, detector=replace(manifest.detector, **setting))
            changes.append(change.format(f"{value:g}"))
        if person_score_file is not None:
            if manifest.detector is None:
                raise ValueError(f"{bundle_dir} has no detector: --person-score needs one")
            d = read_person_score(person_score_file, manifest.detector)
            manifest = replace(manifest, detector=d)
            changes.append(
                f"person score from {person_score_file} (detector threshold "
                f"{d.score_threshold:g}, minimum {d.min_person_score:g}, flip test for boxes "
                f"scoring >= {d.flip_min_score:g})"
                if d.person_score is not None
                else f"official person score ({person_score_file})"
            )
        no_scio = manifest.scio is None or GAMMA_CONTEXT not in manifest.files
        if (search_file is not None or fold_batchnorm or person_features) and no_scio:
            raise ValueError(f"{bundle_dir} has no SCIO networks")
        if scio_dir is not None:
            if search_file is None:
                raise ValueError("--scio needs --search (settings fitted on the new networks)")
            scio, spec, provenance["scio"] = read_scio_run(
                scio_dir,
                manifest.spec,
                manifest.pose.heatmap_hw,
                Path(tmp),
                json.loads(search_file.read_text()),
                search_file,
            )
            old_net = manifest.scio.get("net") or {}  # type: ignore[union-attr]
            new_net = scio.settings.get("net") or {}
            if old_net.get("feature_channels") != new_net.get("feature_channels"):
                raise ValueError(
                    f"{scio_dir}: Φ/Γ read {new_net.get('feature_channels')} feature channels, "
                    f"the bundle's backbone gives {old_net.get('feature_channels')}"
                )
            if spec.groups != manifest.spec.groups:
                raise ValueError(f"{scio_dir}: Φ/Γ were trained for other structural groups")
            manifest = replace(manifest, scio=scio.settings)
            sources |= {GAMMA_CONTEXT: scio.gamma_context, GAMMA_HEAD: scio.gamma_head}
            if scio.phi is not None:
                sources[PHI] = scio.phi
            changes.append(f"Φ and Γ from {scio_dir}, search settings from {search_file}")
        elif search_file is not None:
            wanted = json.loads(search_file.read_text())
            trained = manifest.scio["search"].get("score", "l2")  # type: ignore[index]
            if wanted.get("score", trained) != trained:
                raise ValueError(
                    f"{search_file}: score {wanted['score']!r}, but Γ was trained for {trained!r}"
                )
            search = ScioSearchConfig.from_dict({**wanted, "score": trained}).to_dict()
            manifest = replace(manifest, scio={**manifest.scio, "search": search})  # type: ignore[dict-item]
            changes.append(f"SCIO search settings from {search_file}")
        if pair_split_file is not None:
            split = read_pair_split(pair_split_file)
            if split is not None:
                split.check(manifest.spec)
            manifest = replace(manifest, pose=replace(manifest.pose, pair_split=split))
            changes.append(
                f"left/right pair split from {pair_split_file}: "
                + (json.dumps(split.to_dict()) if split else "none")
            )
        if flip_shift is not None:
            from models.codec import resolve_flip_shift

            pose = manifest.pose
            shift = resolve_flip_shift(flip_shift, pose.input_hw[1], pose.heatmap_hw[1])
            manifest = replace(manifest, pose=replace(pose, flip_shift=shift))
            changes.append(f"flip test shift {pose.flip_shift:g} -> {shift:g} heatmap px")
        if fold_batchnorm or person_features:
            for role in (GAMMA_CONTEXT, PHI):
                if role not in sources:
                    continue
                rewritten = Path(tmp) / f"{role}.onnx"
                done, diff = rewrite_checked(
                    sources[role], rewritten, fold_batchnorm, person_features
                )
                if done:
                    sources[role] = rewritten
                changes.append(f"{role}: {', '.join(done) or 'nothing to rewrite'} "
                               f"(relative difference {diff:.1e})")  # fmt: skip
        if int8_data is not None:
            from training.data.sources import coco_folder
            from training.quantize import network_inputs, quantize_pose

            ann, images = coco_folder(int8_data)
            inputs = network_inputs(bundle_dir, ann, images, limit=int8_images)
            sources[POSE_INT8] = Path(tmp) / "pose_int8.onnx"
            report = quantize_pose(sources[POSE], sources[POSE_INT8], inputs)
            provenance["int8"] = {"data": str(int8_data), **report.to_dict()}
            changes.append(
                f"INT8 backbone calibrated on {report.calibration_crops} crops of {int8_data} "
                f"(check on {report.check_crops}: heatmap peaks within 1 px "
                f"{report.peak_within_1px:.3f}, heatmaps differ by up to "
                f"{report.heatmaps_rel_diff:.3f} of their scale)"
            )
            if DETECTOR in sources and manifest.detector is not None:
                changes.append(
                    _int8_detector(
                        sources, manifest.detector, images, int8_images, Path(tmp), provenance
                    )
                )
        for e in extra or []:
            provenance.update(e)
            changes.append(f"provenance: {', '.join(sorted(e))} replaced")
        provenance.setdefault("commands", []).append(
            {
                "command": command,
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "commit": git_commit(),
                "rebundled": changes,
                **({"note": note} if note else {}),
            }
        )
        manifest = replace(manifest, provenance=provenance)
        write_bundle(out, manifest, sources)
    return changes


def _int8_detector(
    sources: dict[str, Path],
    info: DetectorInfo,
    images: Path,
    limit: int,
    tmp: Path,
    provenance: dict[str, Any],
) -> str:
    """Add the detector's INT8 copy to `sources` (training.quantize); what changed, one line.
    A detector that is not an ultralytics export stays float only."""
    from models.bundle import DETECTOR, DETECTOR_INT8
    from training.quantize import detector_inputs, quantize_detector

    inputs = detector_inputs(images, info.input_hw, limit=limit)
    try:
        report = quantize_detector(
            sources[DETECTOR], tmp / "detector_int8.onnx", inputs, info.score_threshold
        )
    except ValueError as e:
        sources.pop(DETECTOR_INT8, None)
        provenance.pop("int8_detector", None)
        return f"no INT8 detector: {e}"
    sources[DETECTOR_INT8] = tmp / "detector_int8.onnx"
    provenance["int8_detector"] = {"data": str(images), **report.to_dict()}
    return (
        f"INT8 detector calibrated on {report.calibration_images} images of {images} (check on "
        f"{report.check_images}: {report.boxes_kept:.3f} of the float graph's "
        f"{report.boxes_checked} boxes at {info.score_threshold:g} kept with IoU >= 0.9, scores "
        f"within {report.max_score_diff:.3f})"
    )


def rewrite_checked(
    src: Path,
    dst: Path,
    fold_batchnorm: bool,
    person_features: bool,
    rows: int = 5,
    seed: int = 0,
) -> tuple[list[str], float]:
    """The graph passes of `export` on `src` into `dst`; both graphs run on the same random
    inputs (rows of fewer persons; integer inputs small and non-negative), and the largest
    difference relative to each output's scale must stay within the export's parity tolerance.
    Returns (what was done, relative difference)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from models.scio_search import PERSON_INDEX
    from training.onnx_export import (
        PARITY_RTOL,
        ParityError,
        fold_sum_batchnorm,
        gather_features_by_person,
    )

    model = onnx.load(str(src))
    done = []
    if fold_batchnorm and (n := fold_sum_batchnorm(model)):
        done.append(f"{n} BatchNorm folded")
    if person_features and gather_features_by_person(model):
        done.append("features per person")
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    person = np.sort(rng.integers(0, rows - 1, rows)).astype(np.int64)
    feed: dict[str, Any] = {}
    for i in before.get_inputs():
        shape = [d if isinstance(d, int) else rows for d in i.shape]
        if "int" in i.type:
            feed[i.name] = rng.integers(0, 2, shape).astype(np.int64)
        else:
            feed[i.name] = rng.standard_normal(shape).astype(np.float32)
    names_after = {i.name for i in after.get_inputs()}
    feed_after = dict(feed)
    if PERSON_INDEX in names_after and PERSON_INDEX not in feed:
        # the same rows, from per-person maps: row r reads person[r]'s map
        persons = rng.standard_normal((rows - 1, *feed["features"].shape[1:])).astype(np.float32)
        feed["features"] = persons[person]
        feed_after["features"], feed_after[PERSON_INDEX] = persons, person
    worst = 0.0
    for a, b in zip(before.run(None, feed), after.run(None, feed_after), strict=True):
        scale = float(np.abs(a).max()) or 1.0
        worst = max(worst, float(np.abs(a - b).max()) / scale)
    if worst > PARITY_RTOL:
        raise ParityError(
            f"{src.name}: the rewrite changed its outputs by {worst:.2e} of their scale"
        )
    return done, worst


def _evaluation(files: list[Path], data: str) -> dict[str, Any]:
    from training.evaluate import provenance_evaluation

    return {"evaluation": {"data": data, "results": provenance_evaluation(files)}}
