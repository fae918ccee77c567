"""Fixtures shared by the provider tests: where spool files are written and results downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path
