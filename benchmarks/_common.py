"""What the benchmark scripts share: the machine's description, a wall-clock timer, and the
frame of every result file (header with command and machine, targets, JSON + Markdown)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU model, core count, OS and Python, for the header of every result file."""
    system = f"{platform.system()} {platform.machine()}"
    return f"{cpu_model()}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


RESULTS = Path(__file__).resolve().parent / "results"


def md_header(title: str, report: dict[str, Any]) -> list[str]:
    command, machine_ = report["command"], report["machine"]
    return [f"# {title}", "", f"Command: `{command}`  ", f"Machine: {machine_}  "]


def md_targets(targets: dict[str, bool]) -> list[str]:
    return ["## Targets", ""] + [f"- {'met' if ok else 'MISSED'}: {k}" for k, ok in targets.items()]


def split_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that runs a bundle on a labelled split: --bundle (default
    the demo), --ann, --images and --name (default `name`), described by `doc`'s first
    paragraph."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=RESULTS.parents[1] / "bundles" / "demo")
    ap.add_argument("--ann", type=Path, required=True, help="COCO-format person annotations")
    ap.add_argument("--images", type=Path, required=True, help="their image folder")
    ap.add_argument("--name", default=name)
    return ap


def require_bundles(ap: argparse.ArgumentParser, paths: Sequence[Path]) -> None:
    """Stop with a usage error naming the first path that is not a bundle folder."""
    for path in paths:
        if not (path / "bundle.json").is_file():
            ap.error(f"{path} is not a bundle (no bundle.json)")


def write_results(name: str, report: dict[str, Any], markdown: str) -> None:
    """benchmarks/results/NAME.json and NAME.md; the Markdown is printed too."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def shown_path(path: Path) -> str:
    """`path` relative to the repository where it lies inside it (result files name the bundle
    the same way whichever checkout ran them), else as given."""
    root = RESULTS.parents[1]
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def git_commit(path: Path = RESULTS.parents[1]) -> str:
    """The short commit of the checkout at `path` (what a benchmark measured)."""
    import subprocess

    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True
    ).stdout.strip()


def read_run(run: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """A backbone run's log rows, the rows with held-out results, and its config."""
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x]
    points = [r for r in rows if "val_AP" in r]
    if not points:
        raise SystemExit(f"{run}/log.jsonl has no validation rows")
    return rows, points, json.loads((run / "config.json").read_text())
