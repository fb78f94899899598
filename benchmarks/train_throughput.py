"""Backbone training throughput on this machine: samples/s for each (torch threads, loader
workers) pair, the achieved GFLOP/s and its fraction of the machine's measured fp32 matmul rate,
and whether the CPU has native bfloat16.

Each pair runs `scio-pose train backbone --preset PRESET --threads T --workers W` in its own
process for --seconds of wall time on the preset's own data (generated once into --work, shared
by every pair), and reads the throughput of its steady part from the run's log: the first
`--skip` steps (loader start-up, allocator warm-up) are not counted. Then the best pair again
with the model and batches in channels-last memory (`channels_last`), and, where the CPU has
native bfloat16 (avx512_bf16 or AMX), with bf16 autocast (`cpu_bf16`) in either layout (and
the bf16 matmul rate). Every run names both settings, whatever the preset's own are.

    python benchmarks/train_throughput.py --preset cpu-testbed --work runs/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, md_header, write_results  # noqa: E402

PAIRS = ((1, 1), (2, 0), (2, 1), (1, 2))
STEP_RE = re.compile(r"train:.*?(\d+)/\d+ \[")


def matmul_gflops(
    threads: int, n: int = 2048, seconds: float = 3.0, dtype: str = "float32"
) -> float:
    """The best matmul rate torch reaches on `threads` threads in `dtype` (a subprocess, so the
    thread count is its own)."""
    code = (
        "import time, torch\n"
        f"torch.set_num_threads({threads})\n"
        f"a = torch.randn({n}, {n}).to(torch.{dtype})\n"
        f"b = torch.randn({n}, {n}).to(torch.{dtype})\n"
        "for _ in range(3): a @ b\n"
        "best = 0.0; end = time.perf_counter() + " + str(seconds) + "\n"
        "while time.perf_counter() < end:\n"
        "    t = time.perf_counter(); a @ b; dt = time.perf_counter() - t\n"
        f"    best = max(best, 2 * {n}**3 / dt / 1e9)\n"
        "print(best)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def run_pair(
    preset: str,
    threads: int,
    workers: int,
    seconds: float,
    work: Path,
    skip: int,
    settings: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """One (threads, workers) pair; `settings` (channels_last, cpu_bf16; False where not given,
    not the preset's) go to the run through a config file over the preset."""
    settings = {"channels_last": False, "cpu_bf16": False, **(settings or {})}
    tag = "".join(f"-{k}" for k, v in sorted(settings.items()) if v)
    out = work / f"t{threads}-w{workers}{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "data").symlink_to((work / "data").resolve())
    config = out / "settings.toml"
    lines = [f'preset = "{preset}"', *(f"{k} = {str(v).lower()}" for k, v in settings.items())]
    config.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable, "-m", "service.cli", "train", "backbone", "--config", str(config),
        "--out", str(out), "--threads", str(threads), "--workers", str(workers),
        "--time-budget", str(seconds),
    ]  # fmt: skip
    # The progress bar (refreshed every 2 s) gives step counts over wall time.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    marks: list[tuple[float, int]] = []
    buf = ""
    while True:
        chunk = proc.stderr.read(256)
        if not chunk:
            break
        buf = (buf + chunk)[-4096:]
        now = time.perf_counter()
        marks.extend((now, int(m.group(1))) for m in STEP_RE.finditer(chunk))
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{buf}")
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    batch = json.loads((out / "config.json").read_text())["batch_size"]
    steady = [(t, s) for t, s in marks if s >= skip]
    # the bar redraws every 2 s: a window of a few steps or seconds says nothing (a run starved
    # by another job once gave 15 steps, the last five "in" 0.1 s: 1150 samples/s)
    if len(steady) < 2 or steady[-1][1] - steady[0][1] < 10 or steady[-1][0] - steady[0][0] < 10:
        raise RuntimeError(f"too few steps past {skip} in {seconds} s: {marks[-3:]}")
    (t0, s0), (t1, s1) = steady[0], steady[-1]
    rate = (s1 - s0) * batch / (t1 - t0)
    gflop_per_sample = rows[-1]["gflops"] / rows[-1]["samples_per_s"]
    return {
        "threads": threads,
        "workers": workers,
        "channels_last": settings["channels_last"],
        "cpu_bf16": settings["cpu_bf16"],
        "steps": rows[-1]["step"],
        "samples_per_s": rate,
        "gflops": rate * gflop_per_sample,
        "gflop_per_sample": gflop_per_sample,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-testbed")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "throughput")
    ap.add_argument("--data", type=Path, help="an existing run's data folder to share")
    ap.add_argument("--seconds", type=float, default=75.0, help="wall time per pair")
    ap.add_argument("--skip", type=int, default=10, help="start-up steps not counted")
    ap.add_argument("--name", help="results name (default: train_throughput_PRESET)")
    ap.add_argument(
        "--pairs",
        help="(threads, workers) pairs to run, e.g. '2x1,1x1' (default: "
        + ",".join(f"{t}x{w}" for t, w in PAIRS)
        + ")",
    )
    args = ap.parse_args()
    pairs: tuple[tuple[int, int], ...] = PAIRS
    if args.pairs:
        pairs = tuple(
            (int(t), int(w)) for t, w in (p.split("x") for p in args.pairs.split(",") if p)
        )
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data is not None and not (args.work / "data").exists():
        (args.work / "data").symlink_to(args.data.resolve())
    (args.work / "data").mkdir(exist_ok=True)
    from training.train_backbone import cpu_bf16_native

    native = cpu_bf16_native()
    threads_used = sorted({t for t, _ in pairs})
    peak = {t: matmul_gflops(t) for t in threads_used}
    peak_bf16 = {t: matmul_gflops(t, dtype="bfloat16") for t in threads_used} if native else {}
    rows = []

    def run(threads: int, workers: int, settings: dict[str, bool]) -> dict[str, Any]:
        r = run_pair(args.preset, threads, workers, args.seconds, args.work, args.skip, settings)
        ref = peak_bf16 if r["cpu_bf16"] else peak
        r["fraction_of_matmul"] = r["gflops"] / ref[max(ref)]
        rows.append(r)
        print(json.dumps(r), flush=True)
        return r

    for threads, workers in pairs:
        run(threads, workers, {})
    fp32 = max(rows, key=lambda r: r["samples_per_s"])
    t, w = fp32["threads"], fp32["workers"]
    variants = [{"channels_last": True}]
    if native:
        variants += [{"cpu_bf16": True}, {"channels_last": True, "cpu_bf16": True}]
    for settings in variants:
        run(t, w, settings)
    best = max(rows, key=lambda r: r["samples_per_s"])
    report = {
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "preset": args.preset,
        "matmul_gflops": peak,
        "matmul_gflops_bf16": peak_bf16,
        "cpu_bf16_native": native,
        "pairs": rows,
        "best": {k: best[k] for k in ("threads", "workers", "channels_last", "cpu_bf16")},
    }
    lines = md_header(f"Backbone training throughput ({args.preset})", report)
    lines += [
        "",
        "fp32 matmul (torch, 2048², best of 3 s): "
        + ", ".join(f"{v:.0f} GFLOP/s on {t} thread(s)" for t, v in peak.items()),
        f"Native bfloat16 (avx512_bf16/AMX): {'yes' if native else 'no'}"
        + (
            "; bf16 matmul: "
            + ", ".join(f"{v:.0f} GFLOP/s on {t} thread(s)" for t, v in peak_bf16.items())
            if native
            else " — bf16 autocast would be emulated: not run"
        ),
        "",
        "| threads | loader workers | memory | precision | samples/s | GFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['threads']} | {r['workers']} | "
        f"{'channels-last' if r['channels_last'] else 'contiguous'} | "
        f"{'bf16 autocast' if r['cpu_bf16'] else 'fp32'} | {r['samples_per_s']:.1f} | "
        f"{r['gflops']:.1f} | {100 * r['fraction_of_matmul']:.0f}% of "
        f"{'bf16' if r['cpu_bf16'] else 'fp32'} |"
        for r in rows
    ]
    lines += [
        "",
        f"Best: {best['threads']} thread(s), {best['workers']} worker(s), "
        f"{'channels-last' if best['channels_last'] else 'contiguous'}, "
        f"{'bf16 autocast' if best['cpu_bf16'] else 'fp32'}.",
        "",
    ]
    write_results(args.name or f"train_throughput_{args.preset}", report, "\n".join(lines))


if __name__ == "__main__":
    main()
