"""docs/deploy.md stays true to the repository: its settings table and the paths it names."""

from __future__ import annotations

import re

from tests.deploy.support import REPO, setting_env_names

DOC = REPO / "docs" / "deploy.md"


def test_settings_table_lists_every_setting() -> None:
    rows = re.findall(r"^\| `(SCIO_\w+)` \|", DOC.read_text(), re.M)
    assert len(rows) == len(set(rows))
    assert set(rows) == setting_env_names()


def test_paths_it_names_exist() -> None:
    named = re.findall(
        r"`((?:docker|k8s|requirements|scripts|tests|service)/[\w./-]*)", DOC.read_text()
    )
    assert named
    missing = sorted({p for p in named if not (REPO / p).exists()})
    assert not missing, missing
