"""Local emulator of the OpenAI and Anthropic batch HTTP APIs (offline development, demos and tests).

    async with run_emulator(EmulatorConfig(complete_after=2)) as emu:
        client = AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-local")

Names are imported lazily: ``asyncbatch --help`` imports ``asyncbatch.emulator.cli`` (hence this package)
and must not pay for aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig, FaultSpec
    from .core import Clock
    from .ledger import BatchRecord, FaultRecord, FileRecord, Ledger, RequestRecord
    from .outcomes import anthropic_identity
    from .server import Emulator, EmulatorThread, run_emulator

_HOMES = {
    "EmulatorConfig": "config",
    "FaultSpec": "config",
    "Clock": "core",
    "BatchRecord": "ledger",
    "FaultRecord": "ledger",
    "FileRecord": "ledger",
    "Ledger": "ledger",
    "RequestRecord": "ledger",
    "anthropic_identity": "outcomes",
    "Emulator": "server",
    "EmulatorThread": "server",
    "run_emulator": "server",
}

__all__ = [
    "BatchRecord",
    "Clock",
    "Emulator",
    "EmulatorConfig",
    "EmulatorThread",
    "FaultRecord",
    "FaultSpec",
    "FileRecord",
    "Ledger",
    "RequestRecord",
    "anthropic_identity",
    "run_emulator",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
