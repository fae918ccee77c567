"""What the engine needs from a job store, and the rows that cross that boundary.

The manager talks to a ``Store``; ``SQLiteStore`` is the implementation (a file, or ``":memory:"`` for
throwaway runs). The store knows nothing of providers beyond the normalised values in ``providers.base``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from typing import Protocol

import msgspec

from ..errors import StoreError
from ..model import Job, JobStatus, Outcome, RequestCounts, RequestState, Shard
from ..providers.base import BatchError, RemoteBatch, ShardLimits

WireIdFn = Callable[[str, int, str], str]
"""(custom_id, rid, shard token) -> the custom_id the provider sees (``Provider.wire_id``)."""


class LeaseLostError(StoreError):
    """Another worker holds the shard now (or it moved on); this worker must stop touching it."""


class BatchClaimedError(StoreError):
    """The provider batch is already recorded for another shard (found by two reconciliations at once)."""


class NewRequest(msgspec.Struct, kw_only=True, gc=False):
    """A validated request on its way into the store. ``line`` is kept for error messages only."""

    custom_id: str
    url: str
    model: str | None
    body: bytes
    size: int
    line: int


class PlannedShard(msgspec.Struct, kw_only=True):
    endpoint: str
    model: str | None
    request_count: int
    bytes: int
    id: int = 0
    attempt: int = 1
    token: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)


class Settlement(msgspec.Struct, kw_only=True, frozen=True):
    """What becomes of the members of a shard that got no result: re-queued (``pending``, while attempts
    remain, else ``failed``), or ended in ``state``, with the reason."""

    state: RequestState
    error_code: str
    error_message: str
    max_attempts: int = 1
    refund: bool = False  # re-queued without using up the attempt (the provider ran nothing, for its own reason)


class ResultRow(msgspec.Struct, kw_only=True, gc=False):
    """One result to upsert, with the request state it leads to.

    The field order is the parameter order of the ``upsert_result`` and ``settle_request`` queries (plus the
    shard id at the end): a row binds as ``(*astuple(row), shard_id)``, with no per-field Python work.
    """

    rid: int
    attempt: int
    outcome: Outcome
    state: RequestState
    status_code: int | None = None
    body: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    model: str | None = None
    request_id: str | None = None
    line_id: str | None = None


class StoredResult(msgspec.Struct, kw_only=True, gc=False):
    """A request joined with one of its results, as read back from the store."""

    rid: int
    custom_id: str
    state: RequestState
    attempt: int
    request_error_code: str | None
    request_error_message: str | None
    outcome: str | None
    status_code: int | None
    body: bytes | None
    error_code: str | None
    error_message: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    model: str | None
    request_id: str | None
    line_id: str | None
    batch_id: str | None


class Store(Protocol):
    """The durable job store the manager drives (see SQLiteStore for the semantics of each call)."""

    path: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def integrity_check(self) -> str: ...

    async def create_job(self, job: Job, chunks: AsyncIterator[Sequence[NewRequest]]) -> int: ...
    async def get_job(self, job_id: str, *, with_counts: bool = ...) -> Job: ...
    async def list_jobs(self) -> list[Job]: ...
    async def counts(self, job_id: str) -> RequestCounts: ...
    async def set_job_status(self, job_id: str, status: JobStatus) -> bool: ...
    async def request_cancel(self, job_id: str) -> list[Shard]: ...
    async def cancel_pending(self, job_id: str) -> None: ...
    async def job_has_live_work(self, job_id: str) -> bool: ...

    async def plan_shard(self, job: Job, limits: ShardLimits, wire_id: WireIdFn) -> PlannedShard | None: ...
    async def claim_shards(self, job_id: str, owner: str, lease_seconds: float) -> list[int]: ...
    async def renew_lease(self, shard_id: int, owner: str, lease_seconds: float) -> None: ...
    async def renew_leases(self, owner: str, lease_seconds: float) -> None: ...
    async def release(self, shard_id: int, owner: str) -> None: ...
    async def get_shard(self, shard_id: int) -> Shard: ...
    async def job_shards(self, job_id: str) -> list[Shard]: ...
    async def last_failed_with(self, job_id: str, codes: Collection[str]) -> Shard | None: ...
    def spool_rows(self, shard_id: int, chunk: int = ...) -> AsyncIterator[list[tuple[str, str, bytes]]]: ...
    async def shard_uploaded(self, shard_id: int, owner: str, file_id: str | None) -> None: ...
    async def shard_creating(self, shard_id: int, owner: str) -> float: ...
    async def shard_submitted(self, shard_id: int, owner: str, batch: RemoteBatch) -> None: ...
    async def recorded_batch_ids(self, *, since: float) -> set[str]: ...
    async def shard_polled(self, shard_id: int, owner: str, batch: RemoteBatch) -> None: ...
    async def shard_abandoned(self, shard_id: int, errors: list[BatchError], settle: Settlement) -> None: ...

    async def member_requests(
        self, shard_id: int, wire_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, int]]: ...
    async def shard_tally(self, shard_id: int) -> tuple[int, int, int]: ...
    async def ingest(
        self,
        shard_id: int,
        owner: str,
        results: Iterable[ResultRow],
        orphans: Iterable[tuple[str, bytes]] = ...,
        *,
        finish: Settlement | None = None,
        succeeded: Collection[int] = ...,
    ) -> None: ...

    async def final_results(
        self, job_id: str, *, after_rid: int = ..., limit: int = ..., unconsumed: bool = ...
    ) -> list[StoredResult]: ...
    async def attempt_results(
        self, job_id: str, *, after: tuple[int, int] = ..., limit: int = ...
    ) -> list[StoredResult]: ...
    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]: ...
    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None: ...
