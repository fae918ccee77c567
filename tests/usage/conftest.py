"""Fixtures for the user-facing features: an emulator in its own thread (the blocking helpers call it from
their private loop), and the helpers pointed at a fresh store with fast polling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import API_KEY


@pytest.fixture
def emu_thread(tmp_path: Path) -> Iterator[Any]:
    from asyncbatch.emulator import EmulatorConfig, EmulatorThread

    with EmulatorThread(EmulatorConfig(), data_dir=tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
def helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``asyncbatch.litellm`` on a store in tmp_path, polling fast, keys from the environment."""
    from asyncbatch import litellm

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setattr(litellm, "settings", litellm.Settings(db=str(tmp_path / "jobs.db"), poll_interval=0.02,
                                                              max_poll_interval=0.1))
    yield litellm
    litellm.shutdown()
