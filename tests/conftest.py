"""Shared fixtures: a real emulator server on loopback, a real SQLite file, real providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
async def emulator(tmp_path: Path) -> AsyncIterator[Any]:
    from asyncbatch.emulator import EmulatorConfig, run_emulator

    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"
