"""The emulator's knobs. One mutable ``EmulatorConfig`` is read live by every handler, so a test (or
``PATCH /_emulator/config``) that changes a field changes the emulator's behaviour at the next request.

Timing knobs are read at each access, not captured at create: shortening ``complete_after`` makes batches
that are already running end at their next poll.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

MIB = 1024 * 1024

FAULT_GROUPS = (
    "files_upload",
    "files_read",
    "files_content",
    "files_delete",
    "batches_create",
    "batches_read",
    "batches_cancel",
    "anthropic_create",
    "anthropic_read",
    "anthropic_results",
    "anthropic_cancel",
    "anthropic_delete",
    "gemini_upload",
    "gemini_create",
    "gemini_read",
    "gemini_cancel",
    "gemini_download",
    "mistral_upload",
    "mistral_create",
    "mistral_read",
    "mistral_cancel",
    "mistral_download",
)
"""Endpoint groups a ``FaultSpec`` can target; ``"*"`` targets every group without its own spec."""


class FaultSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Injected failures for one endpoint group, drawn from the emulator's seeded RNG per call.

    ``rate_429``/``rate_500``/``rate_503``/``drop_rate`` are exclusive slices of one draw made before the
    handler runs (nothing is created). ``truncate_rate`` applies to downloads only (a full Content-Length is
    announced, half the body is sent, the socket is closed). ``drop_after_create_rate`` applies to create
    calls only: the batch IS created, then the connection is dropped, so the client cannot know.
    ``max_faults`` caps how many faults this spec injects in total (``None``: no cap).
    """

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    drop_after_create_rate: float = 0.0
    retry_after: float = 1.0
    max_faults: int | None = None


class EmulatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Everything that decides what the emulator answers. All fields have offline-friendly defaults.

    Per-request outcomes (see ``asyncbatch.emulator.outcomes`` for the text markers) are a stable hash of
    ``seed``, the request's identity and its submission number, so a run is reproducible and a retried
    request draws again.
    """

    api_keys: list[str] | None = None  # None: any non-empty key is accepted
    seed: int = 0
    # clock (seconds after create): validating ends, requests finish, finalizing lasts, cancelling lasts
    validate_after: float = 0.0
    complete_after: float = 0.0
    finalize_after: float = 0.0
    cancel_after: float = 0.0
    # per-request outcomes
    fail_rate: float = 0.0
    fail_status: int = 500
    expire_rate: float = 0.0
    fail_attempts: int = 0
    # results: seconds they stay downloadable once a batch has ended (None: OpenAI's output_expires_after,
    # 30 days by default; Anthropic's 29 days after creation), and result lines for custom_ids no request
    # had, added to every ended batch (a provider bug a client must keep aside, not drop)
    results_ttl: float | None = None
    stray_results: int = 0
    # batches (1-based creation ordinals, all providers counted together) that expire instead of completing,
    # after this fraction of their requests has finished
    expire_batches: list[int] = msgspec.field(default_factory=list)
    expire_done_fraction: float = 0.5
    # OpenAI limits
    completion_windows: list[str] = msgspec.field(default_factory=lambda: ["24h"])
    token_limit: int | None = None  # estimated prompt tokens one batch may enqueue
    max_file_bytes: int = 512 * MIB
    max_batch_file_bytes: int = 200 * MIB
    max_batch_lines: int = 50_000
    # Anthropic limits and eventual consistency
    anthropic_max_requests: int = 100_000
    anthropic_max_body_bytes: int = 256 * MIB
    anthropic_404_after_create: float = 0.0
    faults: dict[str, FaultSpec] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for window in self.completion_windows:
            window_seconds(window)  # raises on a bad spelling
        unknown = set(self.faults) - {*FAULT_GROUPS, "*"}
        if unknown:
            raise ValueError(f"unknown fault groups {sorted(unknown)}; known: {[*FAULT_GROUPS, '*']}")

    def __repr__(self) -> str:
        return f"EmulatorConfig({', '.join(f'{k}={v!r}' for k, v in self.public().items())})"

    def public(self) -> dict[str, Any]:
        """The config as JSON-ready builtins with the API keys redacted (what the admin endpoint shows)."""
        shown: dict[str, Any] = msgspec.to_builtins(self)
        if self.api_keys is not None:
            shown["api_keys"] = ["[REDACTED]"] * len(self.api_keys)
        return shown

    def fault_spec(self, group: str) -> FaultSpec | None:
        return self.faults.get(group) or self.faults.get("*")

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a partial update in place (top-level keys replace), validating the result first."""
        merged = msgspec.convert({**msgspec.to_builtins(self), **patch}, EmulatorConfig)
        for name in self.__struct_fields__:
            setattr(self, name, getattr(merged, name))


_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    """Seconds in a completion window such as ``"24h"`` or ``"7d"``."""
    match = _WINDOW.match(window)
    if match is None:
        raise ValueError(f"bad completion window {window!r}: expected e.g. '24h' or '7d'")
    return int(match.group(1)) * _UNIT[match.group(2)]
