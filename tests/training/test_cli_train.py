"""`scio-pose train scio`'s and `train backbone`'s overrides reach the training configuration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

import training.train_backbone
import training.train_scio
from training import cli_train
from training.config import PRESETS, SCIO_PRESETS


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


def test_scio_set_overrides_any_field_of_the_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_train(backbone: Path, out: Path, cfg: Any, resume: bool = False) -> None:
        seen.update(cfg=cfg)

    monkeypatch.setattr(training.train_scio, "train_scio", fake_train)
    argv = ["scio", "--backbone", "b.pt", "--out", "o", "--preset", "cpu-testbed"]
    sets = ["--set", "candidates_weight=4", "--set", "context_widths=[8, 8, 16, 16]"]
    sets += ["--set", "score=l2", "--set", 'augment={"flip_prob": 0.25}']
    assert cli_train.run(_parse(argv + sets)) == 0
    preset, cfg = SCIO_PRESETS["cpu-testbed"], seen["cfg"]
    assert cfg.candidates_weight == 4.0
    assert isinstance(cfg.candidates_weight, float)
    assert cfg.context_widths == (8, 8, 16, 16)
    assert cfg.score == "l2"
    assert cfg.augment.flip_prob == 0.25
    assert cfg.augment.rotation_factor == preset.augment.rotation_factor  # the rest kept
    assert cfg.epochs == preset.epochs
    with pytest.raises(ValueError, match="unknown setting"):
        cli_train.run(_parse([*argv, "--set", "no_such_field=1"]))
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        cli_train.run(_parse([*argv, "--set", "candidates_weight"]))


def test_scio_data_and_flip_test_reach_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_train(backbone: Path, out: Path, cfg: Any, resume: bool = False) -> None:
        seen["cfg"] = cfg

    monkeypatch.setattr(training.train_scio, "train_scio", fake_train)
    argv = ["scio", "--backbone", "b.pt", "--out", "o", "--preset", "cpu-testbed"]
    assert cli_train.run(_parse(argv)) == 0
    assert (seen["cfg"].data, seen["cfg"].flip_test) == ("", False)  # the preset's
    assert cli_train.run(_parse([*argv, "--data", "fresh", "--flip-test"])) == 0
    assert (seen["cfg"].data, seen["cfg"].flip_test) == ("fresh", True)


@pytest.mark.parametrize(
    ("flag", "want"), [(None, None), ("--cpu-bf16", True), ("--no-cpu-bf16", False)]
)
def test_backbone_cpu_bf16_override(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, want: bool | None
) -> None:
    seen: dict[str, Any] = {}

    def fake_train(cfg: Any, out: Path, resume: bool = False, time_budget_s: Any = None) -> dict:
        seen.update(cfg=cfg, resume=resume)
        return {"samples": 0}

    monkeypatch.setattr(training.train_backbone, "train_backbone", fake_train)
    argv = ["backbone", "--preset", "cpu-testbed", "--out", "o", "--resume", "--threads", "1"]
    if flag is not None:
        argv.append(flag)
    assert cli_train.run(_parse(argv)) == 0
    preset = PRESETS["cpu-testbed"]
    assert seen["cfg"].cpu_bf16 == (preset.cpu_bf16 if want is None else want)
    assert seen["cfg"].torch_threads == 1
    assert seen["cfg"].train_samples == preset.train_samples  # the rest is the preset's
    assert seen["resume"] is True
