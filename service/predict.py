"""`scio-pose predict`: poses for image files, folders and videos, offline, on the pipeline the
service runs (so a record equals the `/pose` answer for the same image and options).

Output (`--out`): JSON Lines, one record per image or frame: the `/pose` response plus
`source`, `frame` and `timestamp_s` (and `track_id` on each person of a video); or, with
`--format coco`, one JSON list in the COCO keypoint results format. `--render DIR` writes the
annotated images (an annotated MP4 per video). Every file appears whole or not at all: it is
written under a temporary name and renamed when complete.

Video frames get person track IDs (`service.tracking.Tracker`, IoU matching with a memory of
`--track-memory` frames) and, with `--smooth`, 1€-filtered keypoints.

Exit status: 0 when every source was read and estimated, 1 when some image or frame was skipped
(each is reported), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from service.sources import Frame, Source, SourceError

log = logging.getLogger(__name__)

HELP = "poses for images, folders and videos, offline (JSON Lines or COCO results)"
DEFAULT_MAX_PIXELS = 40_000_000  # as the service's SCIO_MAX_PIXELS


def add_arguments(p: argparse.ArgumentParser) -> None:
    from service.settings import DEFAULT_BUNDLE, PRECISION_HELP, PRECISIONS

    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, folders, videos")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle folder")
    p.add_argument("--out", type=Path, help="output file (default: standard output)")
    p.add_argument(
        "--format",
        choices=["jsonl", "coco"],
        default="jsonl",
        help="jsonl: a /pose record per image or frame; coco: one COCO keypoint results list "
        "(image_id: the file name's number for COCO-style names, else the frame's position)",
    )
    p.add_argument("--render", type=Path, metavar="DIR", help="write annotated images/videos")
    p.add_argument(
        "--refine",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="SCIO refinement, as /pose?refine= (default: on when the bundle has it)",
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip test, as /pose?flip= (default: the bundle's, bundle.json pose.flip_test)",
    )
    p.add_argument(
        "--head-view",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the head view, as /pose?head_view=: the backbone run again on each person's "
        "upper-body crop for the nose, eyes and ears (one more backbone pass per person)",
    )
    p.add_argument(
        "--boxes-from",
        type=Path,
        metavar="FILE",
        help='person boxes instead of the detector: JSON {"name": [[x1, y1, x2, y2], ...]}; '
        "a name is the source as reported or the file's own name (a video frame: "
        '"name#index"); [] means nobody; sources not in the file use the detector',
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        help="drop persons scoring below this (their calibrated confidence where the bundle has "
        "one, bundle.json detector.person_score, else box score x mean keypoint score); default: "
        "the bundle's for the persons its detector finds (detector.min_person_score), 0 for given "
        "boxes",
    )
    p.add_argument("--max-persons", type=int, default=None, help="keep the best N persons")
    p.add_argument(
        "--detector-threshold",
        type=float,
        default=None,
        help="the detector's box score threshold, lower finds more people and more false ones "
        "(default: the bundle's; the model returns nothing below its own floor)",
    )
    p.add_argument(
        "--oks-nms",
        type=float,
        default=None,
        help="of two persons whose poses overlap with OKS above this, keep the better-scored "
        "(default: the bundle's)",
    )
    p.add_argument("--batch", type=int, default=4, help="images or frames per pipeline call")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "tensorrt"], default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images larger than this (width x height), as the service",
    )
    video = p.add_argument_group("video")
    video.add_argument(
        "--track-memory",
        type=int,
        default=30,
        help="frames a person may be missed and keep their track ID",
    )
    video.add_argument("--track-iou", type=float, default=0.3, help="box IoU to continue a track")
    video.add_argument("--smooth", action="store_true", help="1€-filter keypoints over frames")
    video.add_argument(
        "--smooth-min-cutoff",
        type=float,
        default=1.0,
        help="1€ filter cut-off of a still keypoint, Hz (lower: smoother)",
    )
    video.add_argument(
        "--smooth-beta",
        type=float,
        default=0.01,
        help="1€ filter speed coefficient (higher: less lag on fast motion)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass
class Summary:
    frames: int = 0
    persons: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run(args: argparse.Namespace) -> int:
    from service.sources import expand_sources

    problem = _check_args(args)
    if problem is not None:
        print(f"scio-pose predict: {problem}", file=sys.stderr)
        return 2
    try:
        sources = expand_sources(args.sources)
        boxes = _read_boxes(args.boxes_from) if args.boxes_from else {}
    except (SourceError, ValueError) as e:
        print(f"scio-pose predict: {e}", file=sys.stderr)
        return 2
    if not sources:
        print("scio-pose predict: no image or video files found", file=sys.stderr)
        return 2
    clash = _render_clash(sources, args.render)
    if clash is not None:
        print(f"scio-pose predict: --render would overwrite the source {clash}", file=sys.stderr)
        return 2
    from service.pipeline import PosePipeline

    try:
        pipeline = PosePipeline.from_path(
            args.bundle,
            device=args.device,
            intra_op_threads=args.threads or None,
            precision=args.precision,
        )
    except (OSError, ValueError) as e:
        print(f"scio-pose predict: cannot load the bundle {args.bundle}: {e}", file=sys.stderr)
        return 2
    if args.refine and not pipeline.refine_available:
        log.info("the bundle has no SCIO networks: no refinement")
    summary = Summary()
    predictor = Predictor(pipeline, args, boxes)
    with _output(args.out) as out:
        summary = predictor.run(sources, out)
    _print_summary(summary, args)
    return 1 if summary.failed else 0


def render_target(source: Source, render: Path) -> Path:
    """Where the annotated copy of `source` goes (a video becomes an MP4)."""
    target = render / source.rel
    return target.with_suffix(".mp4") if source.video else target


def _render_clash(sources: Sequence[Source], render: Path | None) -> str | None:
    if render is None:
        return None
    inputs = {s.path.resolve(): s.name for s in sources}
    for s in sources:
        target = render_target(s, render).resolve()
        if target in inputs:
            return inputs[target]
    return None


def _check_args(args: argparse.Namespace) -> str | None:
    if args.batch < 1:
        return "--batch must be at least 1"
    if args.max_persons is not None and args.max_persons < 1:
        return "--max-persons must be at least 1"
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        return "--min-score must lie in [0, 1]"
    if args.oks_nms is not None and not 0.0 < args.oks_nms <= 1.0:
        return "--oks-nms must lie in (0, 1]"
    if args.detector_threshold is not None and not 0.0 <= args.detector_threshold <= 1.0:
        return "--detector-threshold must lie in [0, 1]"
    if args.track_memory < 0 or not 0.0 < args.track_iou <= 1.0:
        return "--track-memory must be >= 0 and --track-iou in (0, 1]"
    if args.smooth_min_cutoff <= 0 or args.smooth_beta < 0:
        return "--smooth-min-cutoff must be > 0 and --smooth-beta >= 0"
    if args.max_pixels < 1:
        return "--max-pixels must be positive"
    return None


def _read_boxes(path: Path) -> dict[str, npt.NDArray[np.float64]]:
    from service.schemas import parse_boxes

    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"--boxes-from {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--boxes-from {path}: not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f'--boxes-from {path}: expected {{"name": [[x1, y1, x2, y2], ...]}}')
    out = {}
    for name, boxes in data.items():
        try:
            parsed = parse_boxes(json.dumps(boxes))
        except ValueError as e:
            raise ValueError(f"--boxes-from {path}: {name!r}: {e}") from None
        out[name] = np.array(parsed, dtype=np.float64).reshape(-1, 4)
    return out


class Predictor:
    """Reads frames, batches them through the pipeline, tracks, smooths, writes."""

    def __init__(
        self,
        pipeline: Any,
        args: argparse.Namespace,
        boxes: dict[str, npt.NDArray[np.float64]] | None = None,
    ) -> None:
        from service.results import PoseOptions

        self.pipeline = pipeline
        self.args = args
        self.boxes = boxes or {}
        self.options = PoseOptions(
            refine=args.refine,
            flip=args.flip,
            min_score=args.min_score,
            detector_threshold=args.detector_threshold,
            max_persons=args.max_persons,
            oks_nms_threshold=args.oks_nms,
            head_view=args.head_view,
        )
        self._videos: dict[Path, _VideoState] = {}
        self._coco: list[dict[str, Any]] = []
        self._numeric_ids = False

    def run(self, sources: Sequence[Source], out: IO[str]) -> Summary:
        from service.sources import read_frames

        summary = Summary()
        self._numeric_ids = all(not s.video and s.path.stem.isdigit() for s in sources)
        start = time.perf_counter()
        bar = _bar(sources, self.args.quiet)
        position = 0
        try:
            for batch in _batches(read_frames(sources, self.args.max_pixels), self.args.batch):
                good = [f for f in batch if f.image is not None]
                for f in batch:
                    if f.error is not None:
                        where = f"{f.source.name}#{f.index}" if f.source.video else f.source.name
                        log.warning("%s: skipped: %s", where, f.error)
                        summary.failed.append(f"{where}: {f.error}")
                results = self._estimate(good)
                for f, result in zip(good, results, strict=True):
                    summary.persons += self._emit(f, result, out, position)
                    position += 1
                summary.frames += len(batch)
                bar.update(len(batch))
        except BaseException:
            for state in self._videos.values():
                state.close(keep=False)  # no half-written annotated video
            raise
        finally:
            bar.close()
        for state in self._videos.values():
            state.close()
        if self.args.format == "coco":
            json.dump(self._coco, out)
            out.write("\n")
        summary.seconds = time.perf_counter() - start
        return summary

    def _estimate(self, frames: list[Frame]) -> list[Any]:
        if not frames:
            return []
        items = []
        for f in frames:
            assert f.image is not None
            boxes = next((self.boxes[k] for k in _box_keys(f) if k in self.boxes), None)
            opts = self.options if boxes is None else replace(self.options, boxes=boxes)
            items.append((f.image, opts))
        results: list[Any] = self.pipeline.estimate_many(items)
        return results

    def _emit(self, f: Frame, result: Any, out: IO[str], position: int) -> int:
        from service.respond import checked_persons, coco_results, pose_response

        assert f.image is not None
        persons = checked_persons(result, self.pipeline.spec)
        track_ids: list[int] | None = None
        if f.source.video:
            state = self._video_state(f)
            persons, track_ids = state.track(f, persons)
        if self.args.format == "coco":
            image_id = int(f.source.path.stem) if self._numeric_ids else position
            self._coco += [r.model_dump() for r in coco_results(persons, image_id)]
        else:
            response = pose_response(
                result, persons, self.pipeline.spec, self.pipeline.info, result.timings_ms
            )
            record: dict[str, Any] = {
                "source": f.source.name,
                "frame": f.index,
                "timestamp_s": f.timestamp_s,
                **response.model_dump(),
            }
            if track_ids is not None:
                for person, tid in zip(record["persons"], track_ids, strict=True):
                    person["track_id"] = tid
            out.write(json.dumps(record) + "\n")
        if self.args.render is not None:
            self._render(f, persons, track_ids)
        return len(persons)

    def _video_state(self, f: Frame) -> _VideoState:
        state = self._videos.get(f.source.path)
        if state is None:
            state = self._videos[f.source.path] = _VideoState(self.args)
        return state

    def _render(self, f: Frame, persons: list[Any], track_ids: list[int] | None) -> None:
        from service.render import draw_poses

        assert f.image is not None
        labels = colours = None
        if track_ids is not None:
            labels = [f"#{t} {p.score:.2f}" for t, p in zip(track_ids, persons, strict=True)]
            colours = track_ids
        drawn = draw_poses(f.image, persons, self.pipeline.spec, labels, colours)
        target = render_target(f.source, self.args.render)
        if f.source.video:
            self._video_state(f).write(target, np.asarray(drawn), f.fps)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            with _atomic(target, binary=True) as fh:
                drawn.save(fh, format=_pil_format(target))


class _VideoState:
    """One video's tracker, smoother and annotated-video writer."""

    def __init__(self, args: argparse.Namespace) -> None:
        from service.tracking import KeypointSmoother, Tracker

        self.tracker = Tracker(iou_threshold=args.track_iou, memory=args.track_memory)
        self.smoother = (
            KeypointSmoother(args.smooth_min_cutoff, args.smooth_beta) if args.smooth else None
        )
        self.writer: Any = None
        self.tmp: Path | None = None
        self.target: Path | None = None

    def track(self, f: Frame, persons: list[Any]) -> tuple[list[Any], list[int]]:

        boxes = np.array([p.bbox for p in persons], dtype=np.float64).reshape(-1, 4)
        ids = self.tracker.update(boxes, f.index)
        if self.smoother is None:
            return persons, ids
        t = f.timestamp_s if f.timestamp_s is not None else f.index / 30.0
        smoothed = []
        for tid, p in zip(ids, persons, strict=True):
            kps = np.array(p.keypoints, dtype=np.float64)
            kps[:, :2] = self.smoother(tid, kps[:, :2], t)
            smoothed.append(replace(p, keypoints=kps))
        return smoothed, ids

    def write(self, target: Path, rgb: npt.NDArray[np.uint8], fps: float) -> None:
        import cv2

        if self.writer is None:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.target = target
            self.tmp = target.with_name(f".{target.stem}.partial.mp4")
            h, w = rgb.shape[:2]
            fourcc = cv2.VideoWriter.fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, fps or 30.0, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write the video {target}")
        self.writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))

    def close(self, keep: bool = True) -> None:
        if self.writer is not None:
            self.writer.release()
            assert self.tmp is not None
            assert self.target is not None
            if keep:
                os.replace(self.tmp, self.target)
            else:
                self.tmp.unlink(missing_ok=True)
            self.writer = None


def _box_keys(f: Frame) -> tuple[str, str]:
    """The names `--boxes-from` may use for a frame: as reported, or the file's own name."""
    names = (f.source.name, f.source.path.name)
    if f.source.video:
        return (f"{names[0]}#{f.index}", f"{names[1]}#{f.index}")
    return names


def _batches(frames: Iterator[Frame], n: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def _pil_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".webp": "WEBP"}.get(
        path.suffix.lower(), "PNG"
    )


class _Bar:
    """A tqdm bar over images and frames (total known for images; videos add their count)."""

    def __init__(self, total: int | None, quiet: bool) -> None:
        self._bar: Any = None
        if not quiet:
            try:
                from tqdm import tqdm
            except ImportError:
                log.info(
                    "tqdm is not installed: no progress bar (pip install 'scio-pose[predict]')"
                )
                return
            self._bar = tqdm(total=total, unit="img", desc="predict", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _bar(sources: Sequence[Source], quiet: bool) -> _Bar:
    total: int | None = 0
    for s in sources:
        if s.video:
            n = _frame_count(s.path)
            total = None if n is None or total is None else total + n
        elif total is not None:
            total += 1
    return _Bar(total, quiet)


def _frame_count(path: Path) -> int | None:
    from service.sources import open_video

    cap = open_video(path)
    try:
        import cv2

        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
        return n if n > 0 else None
    finally:
        cap.release()


@contextlib.contextmanager
def _atomic(path: Path, binary: bool = False) -> Iterator[IO[Any]]:
    """A file that appears at `path` only when the block completes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _atomic(path) as fh:
        yield fh


def _print_summary(s: Summary, args: argparse.Namespace) -> None:
    rate = s.frames / s.seconds if s.seconds > 0 else 0.0
    lines = [
        f"predict: {s.frames} images/frames, {s.persons} persons, {len(s.failed)} skipped, "
        f"{s.seconds:.1f} s ({rate:.1f} images/s)"
    ]
    if args.out is not None:
        lines.append(f"  results: {args.out}")
    if args.render is not None:
        lines.append(f"  annotated: {args.render}/")
    lines += [f"  skipped {f}" for f in s.failed[:20]]
    if len(s.failed) > 20:
        lines.append(f"  ... and {len(s.failed) - 20} more")
    print("\n".join(lines), file=sys.stderr)
