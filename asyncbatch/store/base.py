"""What the engine and the client need from a job store: the ``Store`` protocol, backend-neutral.

A store persists; it decides nothing. Sharding, lease policy (who is alive), retries and routing live in the
engine, which drives a store through these calls. Every state change is one short transaction; a shard changes
only under its ``Lease`` (owner + fencing token); lease expiry is judged by the store's own clock. The seam values
are in ``asyncbatch.model``. ``tests/store`` holds the contract suite every backend must pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ..errors import BatchClaimedError, LeaseLostError
from ..model import (
    BatchError,
    GatewayBatch,
    GatewayFile,
    GatewayUsage,
    Job,
    JobAudit,
    JobStatus,
    Lease,
    NewRequest,
    PendingRequest,
    PlannedShard,
    ProviderSpec,
    RemoteBatch,
    RequestCounts,
    ResultRow,
    RoutePrice,
    Settlement,
    Shard,
    StoredResult,
    StoreStats,
    VirtualKey,
)

__all__ = [
    "BatchClaimedError",
    "GatewayStore",
    "LeaseLostError",
    "PlanningSession",
    "Store",
]


class PlanningSession(Protocol):
    """One planning transaction of one job: the engine reads pending requests and fills one shard with them.

    Requests read here are the session's until it ends (another worker planning the same job does not get them),
    and everything added is committed together when the session's context exits without an error.
    """

    async def pending(self, limit: int) -> list[PendingRequest]:
        """Pending requests of the job not yet put into a shard by this session, by (route, url, model, rid)."""

    async def add_shard(self, shard: PlannedShard) -> int:
        """Insert the (empty) shard in phase ``planned``; returns its id, also set on ``shard.id``."""

    async def add_members(self, shard: PlannedShard, members: Sequence[tuple[int, str, int]]) -> None:
        """Put requests into the shard: (rid, wire_id, attempt in this shard). Their membership is committed
        before any file is built (invariant 2); they leave ``pending``; the shard's size becomes ``shard``'s."""


class Store(Protocol):
    """The durable job store (see ``SQLiteStore`` for the semantics of each call, and ``tests/store``)."""

    url: str  # how the store was named, without credentials (for messages)
    migrated_from: int | None  # the schema version the last open() brought up to date (0: created), else None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def integrity_check(self) -> str: ...
    async def ping(self) -> None:
        """A trivial round trip: the store answers."""

    async def wait_for_change(self, within: float) -> None:
        """Return when another connection may have committed something (a new job, a cancel), or after
        ``within`` seconds: how a serving worker notices work without polling hard."""

    # --- jobs (the client side) -------------------------------------------------------------------------------

    async def create_job(self, job: Job, chunks: AsyncIterator[Sequence[NewRequest]]) -> int:
        """Insert the job and all its requests in one transaction (invariant 1); returns the request count.
        ``job.routes`` and ``job.content_hash`` are written as they are after the last chunk. An existing job id,
        or idempotency key of the same owner, raises ``JobConflictError`` before any chunk is read."""

    async def find_job(self, *, idempotency_key: str | None = None, content_hash: str | None = None,
                       batch_id: str | None = None, owner: str | None = None) -> Job | None:
        """The owner's job with this idempotency key, else the first with this content hash, else the job one of
        whose shards has this provider batch id."""

    async def get_job(self, job_id: str, *, with_counts: bool = ...) -> Job: ...
    async def list_jobs(self, *, owner: str | None = ..., unfinished: bool = ...) -> list[Job]: ...
    async def unfinished_job_ids(self) -> list[str]: ...
    async def counts(self, job_id: str) -> RequestCounts: ...
    async def set_job_status(self, job_id: str, status: JobStatus) -> bool: ...
    async def set_route(self, job_id: str, route: str, spec: ProviderSpec) -> None:
        """Repoint one route of a job (a new base URL, a key variable): shards not yet created use it."""

    async def request_cancel(self, job_id: str) -> list[Shard]:
        """Mark the job cancelled, cancel its pending requests and unsent shards; returns the shards that may
        exist at the provider, for the caller to cancel there."""

    async def cancel_pending(self, job_id: str) -> None: ...
    async def job_has_live_work(self, job_id: str) -> bool: ...

    # --- planning and leases (the engine) ---------------------------------------------------------------------

    def planning(self, job_id: str) -> AbstractAsyncContextManager[PlanningSession]: ...
    async def lease_holders(self, job_id: str) -> set[str]:
        """Owners that hold a lease on a live shard of the job that has not expired (by the store's clock)."""

    async def claim_shards(
        self, job_id: str, owner: str, lease_seconds: float, *, take_over: Collection[str] = ()
    ) -> list[Lease]:
        """Lease the job's live shards that nobody holds, whose lease expired, or whose holder is in
        ``take_over`` (owners the engine found dead); each claim is a new fencing token. Shards ``owner`` holds
        already are not returned."""

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> None:
        """Extend one lease; ``LeaseLostError`` when it is no longer this lease's."""

    async def renew_leases(self, owner: str, lease_seconds: float) -> None: ...
    async def release(self, lease: Lease) -> None: ...

    # --- shards (the engine) ----------------------------------------------------------------------------------

    async def get_shard(self, shard_id: int) -> Shard: ...
    async def job_shards(self, job_id: str) -> list[Shard]: ...
    async def last_failed_with(self, job_id: str, codes: Collection[str]) -> Shard | None: ...
    def spool_rows(self, shard_id: int, chunk: int = ...) -> AsyncIterator[list[tuple[str, str, bytes]]]: ...
    async def shard_uploaded(self, lease: Lease, file_id: str | None) -> None: ...
    async def shard_creating(self, lease: Lease) -> float: ...
    async def shard_reupload(self, lease: Lease, reason: str) -> None:
        """Back to ``planned`` from ``uploaded`` or ``creating``: the uploaded file is gone before create."""

    async def shard_submitted(self, lease: Lease, batch: RemoteBatch) -> None:
        """Record the created (or adopted) batch; ``BatchClaimedError`` if another shard has it."""

    async def shard_rebind(self, lease: Lease, batch: RemoteBatch) -> None:
        """A submitted shard's batch is gone but another carries its token: record that one instead."""

    async def recorded_batch_ids(self, *, since: float) -> set[str]: ...
    async def shard_polled(self, lease: Lease, batch: RemoteBatch) -> None: ...
    async def shard_note(self, lease: Lease, error: str | None) -> None:
        """Keep (or clear) the last failure of a step, for status displays while the shard waits."""

    async def shard_abandoned(self, lease: Lease, errors: list[BatchError], settle: Settlement) -> None:
        """A shard that will not (or no longer) run at the provider, in any live phase (rejected at create,
        its batch vanished): it ends ``abandoned`` and its members are settled by ``settle``."""

    # --- ingestion (the engine) -------------------------------------------------------------------------------

    async def member_requests(
        self, shard_id: int, wire_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, int]]: ...
    async def shard_tally(self, shard_id: int) -> tuple[int, int, int]: ...
    async def ingest(
        self,
        lease: Lease,
        results: Iterable[ResultRow],
        orphans: Iterable[tuple[str, bytes]] = ...,
        *,
        finish: Settlement | None = None,
        succeeded: Collection[int] = ...,
    ) -> None: ...

    # --- results (the client side) ----------------------------------------------------------------------------

    async def final_results(
        self, job_id: str, *, after_rid: int = ..., limit: int = ..., unconsumed: bool = ...
    ) -> list[StoredResult]: ...
    async def attempt_results(
        self, job_id: str, *, after: tuple[int, int] = ..., limit: int = ...
    ) -> list[StoredResult]: ...
    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]: ...
    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None: ...
    async def audit(self, job_id: str) -> JobAudit: ...
    async def stats(self) -> StoreStats: ...

    # --- moving a store (``asyncbatch db copy``) ----------------------------------------------------------------

    def dump(self, chunk: int = ...) -> AsyncIterator[tuple[str, list[tuple[Any, ...]]]]:
        """Every row of every table (``store.sql.TABLES``: columns in order, leases left out), as (table, rows)
        pages, parents first; values are the same Python types on every backend."""

    async def load(self, dump: AsyncIterator[tuple[str, list[tuple[Any, ...]]]]) -> dict[str, int]:
        """Fill this store, which holds no job yet, with a ``dump`` of another (any backend), in one
        transaction; returns the rows of each table."""


class GatewayStore(Protocol):
    """What the batch gateway (``asyncbatch proxy``) keeps, beside the jobs that run its batches: virtual keys
    (hashed), files with their content in chunks, client batches, prices, and the spend booked per request.

    The gateway keeps nothing elsewhere, so that several gateway processes on one store serve the same objects.
    Every read of a client's object names its ``owner`` (tenant): another owner's id finds nothing. The spend of
    a batch's billed results is booked in the transaction that ingests them (``ingest``), never in a later pass.
    ``tests/store/test_gateway_contract.py`` is the contract every backend passes.
    """

    async def add_key(self, key: VirtualKey) -> None: ...
    async def get_key(self, token: str) -> VirtualKey | None: ...
    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        """Delete keys by token; returns the tokens that existed."""

    async def key_usage(self, token: str) -> GatewayUsage:
        """Spend booked for every batch the key created."""

    async def batch_usage(self, batch_id: str) -> GatewayUsage: ...
    async def set_prices(self, prices: Sequence[RoutePrice]) -> None:
        """Batch prices per route, used by the spend booked from now on."""

    async def add_file(self, file: GatewayFile) -> None:
        """A new file; one in status ``uploading`` is invisible until ``file_uploaded``."""

    async def add_file_chunk(self, file_id: str, seq: int, data: bytes) -> None: ...
    async def file_uploaded(self, file_id: str, size: int, lines: int) -> None: ...
    async def get_file(self, file_id: str, owner: str) -> GatewayFile | None: ...
    async def list_files(
        self, owner: str, *, purpose: str | None = ..., after: str | None = ..., limit: int = ...,
        newest_first: bool = ...,
    ) -> list[GatewayFile]:
        """The owner's files after the file ``after`` (an id that is not the owner's gives an empty page)."""

    def file_chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """An upload's content, chunk by chunk."""

    async def delete_file(self, file_id: str, owner: str) -> bool: ...
    async def drop_upload(self, file_id: str) -> None:
        """Remove an upload that did not finish, with its chunks (a finished file is left alone)."""

    async def drop_uploads(self, before: float) -> int:
        """Remove uploads never finished that began before ``before``; returns how many."""

    async def add_batch(self, batch: GatewayBatch) -> None: ...
    async def get_batch(self, batch_id: str, owner: str) -> GatewayBatch | None: ...
    async def list_batches(self, owner: str, *, after: str | None = ..., limit: int = ...) -> list[GatewayBatch]:
        """The owner's batches, newest first, after the batch ``after``."""

    async def validating_batches(self) -> list[GatewayBatch]:
        """Batches whose creation a process did not finish (killed before their job was stored)."""

    async def batch_submitted(self, batch_id: str) -> None: ...
    async def batch_failed(self, batch_id: str, errors: Sequence[BatchError], at: float) -> None: ...
    async def batch_cancelling(self, batch_id: str, at: float) -> None: ...
    async def batch_ended(self, batch: GatewayBatch, files: Sequence[GatewayFile]) -> bool:
        """Record how a submitted batch ended and add its output and error files, in one transaction; False
        when another process recorded it first (then nothing is written)."""
