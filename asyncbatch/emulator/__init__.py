"""Local emulator of the OpenAI, Anthropic, Gemini and Mistral batch HTTP APIs (offline development, demos, tests).

    async with run_emulator(EmulatorConfig(complete_after=2)) as emu:
        openai = AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-local")
        claude = AsyncAnthropic(base_url=emu.anthropic_base_url, api_key="sk-local")
        gemini = genai.Client(api_key="local", http_options=HttpOptions(base_url=emu.gemini_base_url))
        mistral = Mistral(api_key="local", server_url=emu.mistral_base_url)

``EmulatorThread`` serves the same from a daemon thread for sync code; ``asyncbatch emulator`` serves it
from the command line. It speaks the wire protocols of ``provider-batch-apis.md`` (OpenAI Files + Batches
under ``/v1``, Anthropic Message Batches under ``/v1/messages/batches``) and of Gemini Batch Mode (under
``/gemini``, then ``/v1`` or ``/v1beta``) and Mistral's batch jobs (under ``/mistral/v1``), and keeps files on
disk.

What it answers is decided by the live ``EmulatorConfig`` (mutate ``emu.config``, or
``PATCH /_emulator/config``): the clock (``validate_after``, ``complete_after``, ``finalize_after``,
``cancel_after``; ``emu.clock.advance()`` or ``POST /_emulator/clock`` skips ahead), per-request outcomes
(``fail_rate``, ``expire_rate``, ``fail_attempts``, ``seed``, and markers in the request text:
``[[fail:NNN]]``, ``[[expire]]``, ``[[fail_attempts:K]]``, see ``outcomes``), batches that expire
(``expire_batches``), results that expire before they are downloaded (``results_ttl``), result lines for
custom_ids nobody sent (``stray_results``), limits, and injected HTTP faults per endpoint group
(``FaultSpec``). ``emu.ledger`` (``GET /_emulator/ledger``) records every file, batch, request line, fault and
call of each route, so a test can prove that a client lost nothing, was billed once, and polled how often.

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
