"""The engine's settings, checked once: every bound names the option it belongs to.

Shared by ``BatchManager(...)`` keyword arguments, ``asyncbatch run`` and ``asyncbatch worker`` options.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec

from ..checks import non_negative, poll_intervals, positive, whole_number
from ..model import ShardLimits


class EngineConfig(msgspec.Struct, kw_only=True, frozen=True):
    """How the engine paces and sizes its work.

    ``poll_interval`` is the shortest time between two polls of one batch, growing by half after each poll that
    sees no new status, up to ``max_poll_interval``. ``lease_seconds`` is how long another worker waits before
    taking over the shards of one that stopped answering (a dead process on the same host is taken over at once).
    ``max_requests_per_batch`` / ``max_bytes_per_batch`` lower the providers' own limits. ``ingest_chunk`` bounds
    the results committed per transaction. ``capacity_hold`` is how long a job waits after the provider's queue
    was full before sending smaller batches. ``give_up_after`` bounds how long a shard keeps trying a step the
    provider keeps failing (unreachable, 5xx) before ``run`` reports it; ``serve`` keeps trying.
    ``job_poll_interval`` is how often a serving worker looks for new jobs when the store cannot notify it.
    ``poll_rate`` bounds the calls a second spent polling one provider, all its batches together (where it lists
    batches, one call reads the status of a page of them). ``retry_window`` is how long failed requests to be
    sent again wait for the failures of the job's other batches still out, to go back in one batch (0: at once).
    """

    poll_interval: float = 5.0
    max_poll_interval: float = 300.0
    max_requests_per_batch: int | None = None
    max_bytes_per_batch: int | None = None
    lease_seconds: float = 60.0
    spool_dir: str | None = None
    ingest_chunk: int = 10_000
    capacity_hold: float = 60.0
    uploads_at_once: int = 4
    give_up_after: float = 900.0
    job_poll_interval: float = 1.0
    poll_rate: float = 10.0
    retry_window: float = 30.0

    def __post_init__(self) -> None:
        poll_intervals(self.poll_interval, self.max_poll_interval)
        for name in ("lease_seconds", "give_up_after", "job_poll_interval", "poll_rate"):
            positive(getattr(self, name), name)
        for name in ("ingest_chunk", "uploads_at_once"):
            whole_number(getattr(self, name), name)
        for name in ("max_requests_per_batch", "max_bytes_per_batch"):
            if getattr(self, name) is not None:
                whole_number(getattr(self, name), name)
        non_negative(self.capacity_hold, "capacity_hold")
        non_negative(self.retry_window, "retry_window")

    def limits(self, provider: ShardLimits) -> ShardLimits:
        """The provider's limits, lowered by the configured ones."""
        return ShardLimits(
            max_requests=min(provider.max_requests, self.max_requests_per_batch or provider.max_requests),
            max_bytes=min(provider.max_bytes, self.max_bytes_per_batch or provider.max_bytes),
        )

    def spool_for(self, store_url: str) -> Path:
        """Where shard files are built: beside a SQLite file, else in the user's cache directory, in a folder of
        each store's own (two databases may both have a job "x" with a shard 1: a spool file is reused when it
        exists, so one store must never find another's)."""
        if self.spool_dir is not None:
            return Path(self.spool_dir)
        if "://" not in store_url:
            return Path(store_url + ".spool") if store_url != ":memory:" else Path(".asyncbatch-spool")
        cache = os.environ.get("XDG_CACHE_HOME")
        base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
        return base / "asyncbatch" / "spool" / hashlib.sha256(store_url.encode()).hexdigest()[:16]

