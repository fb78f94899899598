"""scripts/build-demo-bundle: valid bash, and a wrong PROFILE, BACKBONE_SAMPLES or BACKBONE_BF16
refused before any set-up."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-demo-bundle"
BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def test_parses() -> None:
    assert BASH is not None
    done = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"PROFILE": "2h"}, "PROFILE must be full or 3h, not '2h'"),
        ({"BACKBONE_SAMPLES": "auto"}, "BACKBONE_SAMPLES=auto needs PROFILE=3h"),
        ({"PROFILE": "3h", "BACKBONE_SAMPLES": "400k"}, "BACKBONE_SAMPLES must be a number"),
        ({"PROFILE": "3h", "BACKBONE_BF16": "yes"}, "BACKBONE_BF16 must be 0 or 1, not 'yes'"),
        ({"BACKBONE_BF16": "1"}, "BACKBONE_BF16=1 is for PROFILE=3h"),
    ],
)
def test_wrong_settings_refused_before_set_up(
    tmp_path: Path, settings: dict[str, str], message: str
) -> None:
    """On a copy of the script whose scripts/_env.sh leaves a mark when sourced: a wrong PROFILE
    or backbone length exits 2 with a message before the environment (venv install) is
    touched."""
    assert BASH is not None
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / SCRIPT.name
    shutil.copy(SCRIPT, script)
    (tmp_path / "scripts" / "_env.sh").write_text("touch sourced\nensure_venv() { :; }\n")
    run = tmp_path / "run"
    ours = ("PROFILE", "BACKBONE_SAMPLES", "BACKBONE_BF16")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(RUN=str(run), OUT=str(tmp_path / "out"), **settings)
    done = subprocess.run([BASH, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "sourced").exists()
    assert not run.exists()
