"""`scio-pose train scio`'s overrides reach the training configuration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import training.train_scio
from training import cli_train
from training.config import SCIO_PRESETS


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("seed", [None, 7])
def test_scio_seed_override(monkeypatch: pytest.MonkeyPatch, seed: int | None) -> None:
    seen: dict[str, Any] = {}

    def fake_train(backbone: Path, out: Path, cfg: Any, resume: bool = False) -> None:
        seen.update(backbone=backbone, out=out, cfg=cfg, resume=resume)

    monkeypatch.setattr(training.train_scio, "train_scio", fake_train)
    argv = ["scio", "--backbone", "b.pt", "--out", "o", "--preset", "cpu-testbed", "--epochs", "3"]
    if seed is not None:
        argv += ["--seed", str(seed)]
    assert cli_train.run(_parse(argv)) == 0
    preset = SCIO_PRESETS["cpu-testbed"]
    assert seen["cfg"].seed == (preset.seed if seed is None else seed)
    assert seen["cfg"].epochs == 3
    assert seen["cfg"].lr == preset.lr  # the rest is the preset's
