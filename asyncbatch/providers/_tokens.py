"""How a provider batch is recognised as a shard's after a crash: wire ids that carry the shard's token, and
a search horizon read on the provider's own clock.

Providers that keep no searchable metadata (Anthropic), or whose custom_ids are bounded (Gemini keys,
Mistral custom_ids), send ``f"{token[:16]}-{rid}"`` instead of the user's custom_id: it always fits, and every
line names its shard.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

#: How far before the shard entered ``creating`` (moved onto the provider's clock) a search still looks.
FIND_MARGIN = 600.0


def shard_prefix(token: str) -> str:
    """What every wire id of a shard starts with; 64 bits of its uuid4 token tell shards apart."""
    return f"{token[:16]}-"


def token_wire_id(token: str, rid: int) -> str:
    """The wire id of request ``rid`` (the store's integer id) in the shard of ``token``."""
    return f"{shard_prefix(token)}{rid}"


def provider_horizon(headers: Mapping[str, str], started_at: float, *, margin: float = FIND_MARGIN) -> float | None:
    """The earliest creation time, on the provider's clock, that a batch created since ``started_at`` (our
    clock) can show: the provider's ``Date`` header less the time that has passed since on ours, less
    ``margin``. Only intervals of our clock are used, never our clock against the provider's, so a provider
    whose clock is hours off is still searched right. None without a ``Date`` header: search everything."""
    date = headers.get("Date") or headers.get("date")
    try:
        parsed = email.utils.parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        parsed = None
    if parsed is None:
        return None
    return parsed.timestamp() - max(time.time() - started_at, 0.0) - margin
