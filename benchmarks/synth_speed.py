"""Generation speed of the synthetic dataset (`scio-pose synth`), on one core and on all cores.

    .venv/bin/python benchmarks/synth_speed.py

Measures end to end (scene, drawing, labels, detections, JPEG files, JSON) through
`training.synth.generate.generate`, as `scio-pose synth` runs it, at 256x256 and 640x480; then a
per-stage breakdown of one image on one core. Writes benchmarks/results/synth_speed.json and
benchmarks/results/synth_speed.md. The CPU may be shared: the load average is recorded before
and after each measurement, so a busy machine shows in the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks._common import RESULTS, cpu_model  # noqa: E402
from models.keypoints import COCO17  # noqa: E402
from training.synth.detections import simulate_detections  # noqa: E402
from training.synth.generate import (  # noqa: E402
    SynthConfig,
    generate,
    image_rngs,
    visible_fraction,
)
from training.synth.labels import coco_annotation, label_persons  # noqa: E402
from training.synth.scene import finish_image, plan_scene, render_scene  # noqa: E402

log = logging.getLogger("synth_speed")
TARGET_PER_CORE_256 = 20.0  # images/s, from the issue

NOTES = """\
Notes. Wall-clock rates on this shared 2-core machine depend on what the other users run at the
time (see the load averages): the two-worker rows show how much of the second core was free,
not how the generator scales. CPU ms per image (this process plus its workers) is the steadier
number; per-core throughput is about 1000 / that. Stage times come from other images than the
end-to-end runs (another seed), so they do not add up to them exactly.

Profile (cProfile, 30 images at 640x480, before optimising). Expected: drawing the people to
dominate. Measured: drawing was under half; Pillow's GaussianBlur of the background cost ~17 ms
an image (more than any one person) and the camera gamma (float `**` over the whole image)
~13 ms. Changes: a box blur for the background defocus (a third of the cost, looks the same at
these radii), gamma as a 256-entry lookup table in Pillow, fewer full-image float passes, Pillow's
channel multiply for the light map, a numpy table instead of a Python lambda for texture tints.
cProfile total went from 104 to 76 ms an image at 640x480 (both runs under other users' load,
so approximate). 256x256 met the target before these changes too (~35 images/s on one core).
"""


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(width: int, height: int, n: int, workers: int) -> dict[str, Any]:
    """Wall-clock throughput, and CPU time per image (less sensitive to other users' load)."""
    cfg = SynthConfig(width=width, height=height, seed=123)
    with tempfile.TemporaryDirectory() as tmp:
        before = _load()
        t, cpu = time.perf_counter(), _cpu_seconds()
        summary = generate(cfg, Path(tmp), n, workers=workers, progress=False)
        dt, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
    rate = n / dt
    log.info("%dx%d, %d worker(s): %.1f images/s", width, height, workers, rate)
    return {
        "size": [width, height],
        "workers": workers,
        "images": n,
        "persons": summary.persons,
        "seconds": round(dt, 2),
        "images_per_s": round(rate, 1),
        "images_per_s_per_core": round(rate / workers, 1),
        "cpu_ms_per_image": round(cpu * 1000 / n, 1),
        "load_before": before,
        "load_after": _load(),
    }


def stages(width: int, height: int, n: int) -> dict[str, float]:
    """CPU milliseconds per image spent in each stage, one core, in process."""
    cfg = SynthConfig(width=width, height=height, seed=321)
    total: dict[str, float] = {}

    def add(name: str, t0: float) -> float:
        t1 = time.process_time()
        total[name] = total.get(name, 0.0) + (t1 - t0) * 1000 / n
        return t1

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            t = time.process_time()
            scene_rng, det_rng = image_rngs(cfg.seed, i)
            scene = plan_scene(scene_rng, width, height, cfg.persons)
            t = add("plan (background, people, occluders)", t)
            canvas = render_scene(scene)
            t = add("draw people and occluders", t)
            image = finish_image(scene, canvas.rgb)
            t = add("camera effects", t)
            labels = label_persons(canvas, [(p.body, p.scale) for p in scene.persons], COCO17)
            boxes = np.array([lab.bbox for lab in labels]).reshape(-1, 4)
            visible = np.array([visible_fraction(lab) for lab in labels])
            simulate_detections(det_rng, boxes, visible, i + 1, width, height)
            t = add("labels and detections", t)
            for lab in labels:
                coco_annotation(lab, lab.person, i + 1)
            t = add("COCO records (masks as RLE)", t)
            Image.fromarray(image).save(Path(tmp) / "x.jpg", quality=90)
            add("JPEG", t)
    return {k: round(v, 2) for k, v in total.items()}


def write_markdown(result: dict[str, Any], path: Path) -> None:
    m = result["machine"]
    lines = [
        "# Synthetic dataset generation speed",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores (shared with other users); "
        f"Python {m['python']}, numpy {m['numpy']}, Pillow {m['pillow']}.  ",
        f"Load average (1, 5, 15 min) at the start: {result['load_start']}, "
        f"at the end: {result['load_end']}.",
        "",
        "End to end (`generate`, as `scio-pose synth` runs it: images, JPEG files, JSON):",
        "",
        "| size | workers | images | images/s | images/s per core | CPU ms per image "
        "| load before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['size'][0]}x{r['size'][1]} | {r['workers']} | {r['images']} | "
        f"{r['images_per_s']} | {r['images_per_s_per_core']} | {r['cpu_ms_per_image']} | "
        f"{r['load_before'][0]} → {r['load_after'][0]} |"
        for r in result["runs"]
    ]
    t = result["target"]
    verdict = "met" if t["met"] else "MISSED"
    lines += [
        "",
        f"Target: ≥ {t['images_per_s_per_core']} images/s per core at 256x256 — "
        f"{verdict} (measured {t['measured']} on one core).",
        "",
        "Where one image's time goes (CPU ms, one core, in process):",
        "",
        "| stage | 256x256 | 640x480 |",
        "|---|---|---|",
    ]
    small, large = result["stages"]["256x256"], result["stages"]["640x480"]
    for k in small:
        lines.append(f"| {k} | {small[k]} | {large[k]} |")
    lines += ["", NOTES]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the image counts")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cores = os.cpu_count() or 1
    load_start = _load()
    runs = []
    for w, h, n in ((256, 256, 240), (640, 480, 80)):
        n = max(int(n * args.scale), 4)
        runs.append(measure(w, h, n, 1))
        runs.append(measure(w, h, n * cores, cores))
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu": cpu_model(),
            "cores": cores,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_start": load_start,
        "runs": runs,
        "stages": {"256x256": stages(256, 256, 40), "640x480": stages(640, 480, 20)},
    }
    measured = runs[0]["images_per_s_per_core"]
    result["target"] = {
        "images_per_s_per_core": TARGET_PER_CORE_256,
        "measured": measured,
        "met": measured >= TARGET_PER_CORE_256,
    }
    result["load_end"] = _load()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "synth_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / "synth_speed.md")
    if not result["target"]["met"]:
        log.warning("target missed: %.1f < %.1f images/s per core", measured, TARGET_PER_CORE_256)
    log.info("wrote %s", RESULTS / "synth_speed.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
