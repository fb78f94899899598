"""Does the backbone's bf16 autocast slow the 3-hour build's detector beside it? Run while a
`PROFILE=3h` build's detector trains: the detector's pace (batches per second, read from the
build's log) beside the build's own backbone sitting, then beside one-thread backbones started
here in fp32, bf16 and fp32 again (the build's backbone sitting is stopped first, so the build's
backbone must be resumed or the build restarted afterwards).

    python benchmarks/detector_pace_ab.py --log RUN.log --scratch runs/pace
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path


def detector_batch(log: Path) -> int:
    """The detector's batch within its epoch, from the last progress bar in the build's log."""
    tail = log.read_bytes()[-4000:].decode("utf-8", "replace")
    found = re.findall(r"(\d+)/\d+ ", tail)
    if not found:
        raise SystemExit(f"no detector progress in {log}")
    return int(found[-1])


def window(log: Path, label: str, warm: float, span: float) -> None:
    time.sleep(warm)
    i0, t0 = detector_batch(log), time.time()
    time.sleep(span)
    i1, t1 = detector_batch(log), time.time()
    n = i1 - i0
    per = (t1 - t0) / n if n > 0 else float("nan")
    print(f"{label}: {n} batches in {t1 - t0:.0f} s, {per:.3f} s per batch", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log", type=Path, required=True, help="the build's log (its stdout)")
    ap.add_argument("--run", type=Path, required=True, help="the build's RUN folder")
    ap.add_argument("--scratch", type=Path, required=True, help="folder for the backbones here")
    ap.add_argument("--warm", type=float, default=75.0, help="seconds before each window")
    ap.add_argument("--span", type=float, default=150.0, help="seconds per window")
    args = ap.parse_args()
    window(args.log, "bf16 (the build's sitting)", 0.0, args.span)
    subprocess.run(["pkill", "-f", f"out {args.run}/backbone"], check=False)
    time.sleep(5)
    arms = [("fp32", "--no-cpu-bf16"), ("bf16", "--cpu-bf16"), ("fp32", "--no-cpu-bf16")]
    for label, flag in arms:
        out = args.scratch / label
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        # the build's pool, shared as train_throughput.py shares one (no data generation
        # inside the window)
        (out / "data").symlink_to((args.run / "backbone" / "data").resolve())
        cmd = ["scio-pose", "train", "backbone", "--preset", "cpu-testbed", "--out", str(out),
               "--resume", "--samples", "100000000", "--threads", "1", "--time-budget", "20m",
               flag]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            window(args.log, f"{label} (one thread, started here)", args.warm, args.span)
        finally:
            proc.terminate()
            proc.wait()
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
