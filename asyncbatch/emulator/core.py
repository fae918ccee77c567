"""State shared by both providers' APIs: the live config, the ledger, the clock, the data directory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from .config import EmulatorConfig
from .ledger import Ledger


class Clock:
    """Wall-clock time plus an offset that tests (or ``POST /_emulator/clock``) can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Context:
    """What every handler reads: ``config`` is the live object the user mutates."""

    def __init__(self, config: EmulatorConfig, ledger: Ledger, clock: Clock, data_dir: Path) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.data_dir = data_dir
        self._ordinals = itertools.count(1)

    def next_ordinal(self) -> int:
        """1-based creation order of batches over both providers (what ``expire_batches`` names)."""
        return next(self._ordinals)


class HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=HasId)


def after_cursor(items: Sequence[T], after: str | None, limit: int) -> tuple[list[T], bool]:
    """One page of ``items`` (already in list order) following the item ``after``; (page, has_more).

    Raises KeyError when ``after`` names no item.
    """
    start = 0
    if after:
        start = next((i for i, item in enumerate(items) if item.id == after), -1) + 1
        if start == 0:
            raise KeyError(after)
    page = list(items[start:start + limit])
    return page, start + limit < len(items)
