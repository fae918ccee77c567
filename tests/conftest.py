"""Shared fixtures: a real emulator server on loopback, with its files under the test's tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from asyncbatch.emulator import Emulator, EmulatorConfig, run_emulator


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    """The emulator with default settings; tests change ``emu.config`` as they need."""
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emulator") as emulator:
        yield emulator
