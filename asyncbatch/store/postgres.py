"""The PostgreSQL job store: every worker, on every machine, shares one database (``asyncbatch[postgres]``).

Coordination is PostgreSQL's own: planners read pending requests ``FOR UPDATE SKIP LOCKED`` (two planners of one
job fill different shards), shard claims skip rows another worker is claiming, lease expiry is judged by
``now()`` (never a worker's clock), and every change of a shard names its fencing token. Transactions are short and
never span a network call to a provider. ``LISTEN/NOTIFY`` wakes serving workers when a job is submitted or
cancelled; polling stays the fallback, since a notification sent while a listener is disconnected is lost.

The database may go away: a dropped connection (``pg_terminate_backend``, a restart, a failover) is retried with
backoff for ``retry_for`` seconds, and a transaction is retried as a whole, never half-applied. When the
connection drops while ``COMMIT`` is in flight, ``txid_status`` tells whether it landed, so nothing is recorded
twice. Driver: psycopg 3 with psycopg_pool.
"""

from __future__ import annotations

import logging
import random
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import msgspec
import psycopg
import psycopg.errors
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from ..errors import (
    BatchClaimedError,
    DuplicateCustomIdError,
    JobConflictError,
    JobNotFoundError,
    LeaseLostError,
    PlanningConflictError,
    SchemaVersionError,
    StoreError,
)
from ..model import (
    BatchError,
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
    RequestState,
    ResultRow,
    Settlement,
    Shard,
    ShardPhase,
    StoredResult,
    StoreStats,
)
from .postgres_gateway import PostgresGateway
from .sql import SCHEMA_VERSION, TABLES, dump_query, migrations, queries, schema
from .sqlite import _job, _job_params, _shard, _stored_result

log = logging.getLogger("asyncbatch")

_Q = queries("postgres")
_T = TypeVar("_T")
_json = msgspec.json.encode
_STATES = {state.value: state for state in RequestState}
CHANNEL = "asyncbatch"
_STAGED_TYPES = ["int8", "int4", "int8", "text", "int4", "bytea", "text", "text", "int8", "int8", "int8", "text",
                 "text", "text"]
#: psycopg errors that no wait mends: the caller's to fix (a wrong password, no such database).
_FINAL_CONNECT = ("password authentication failed", "no password supplied", "does not exist",
                  "invalid connection option", "invalid URI", "certificate")
#: SQLSTATEs retried besides lost connections: serialization failure, deadlock, read-only (a failover under way).
_RETRY_STATES = {"40001", "40P01", "25006"}


class PostgresStore(PostgresGateway):
    """Durable store of jobs, requests, shards and results in a PostgreSQL database (one per deployment).

    ``url`` is a libpq URL (``postgresql://user@host:port/db``, ``postgres://...``); the ``url`` attribute keeps it
    without its password, for messages. ``pool_size`` bounds the connections of this process; ``retry_for``
    bounds how long a call keeps retrying while the database is unreachable before it raises ``StoreError``.
    ``prepare_threshold=None`` turns off server-side prepared statements (behind PgBouncer in transaction mode).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        retry_for: float = 60.0,
        connect_timeout: float = 10.0,
        prepare_threshold: int | None = 5,
    ) -> None:
        self._dsn = url
        self.url = redact(url)
        try:
            secret = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"not a PostgreSQL URL: {self.url} ({str(exc).replace(url, self.url)})") from None
        self._secret = str(secret) if secret else None
        self._pool_size = pool_size
        self.retry_for = retry_for
        self._connect_timeout = connect_timeout
        self._prepare_threshold = prepare_threshold
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._listen_lock = anyio.Lock()
        # connections whose session has the temporary table results are staged in
        self._staging: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()
        self.migrated_from: int | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    # --- connection ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check (and create or upgrade) the schema on one connection, then open the pool."""
        if self._pool is not None:
            return
        await self._retrying(self._prepare)
        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
            self._dsn, min_size=1, max_size=self._pool_size, open=False,
            timeout=min(self._connect_timeout, max(1.0, self.retry_for)),
            kwargs=self._connect_kwargs(), name="asyncbatch",
        )
        await pool.open(wait=False)
        self._pool = pool

    def _connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "prepare_threshold": self._prepare_threshold,
                "connect_timeout": max(1, int(self._connect_timeout))}

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._dsn, **self._connect_kwargs())

    async def _prepare(self) -> None:
        """Refuse a newer schema before writing anything; make a new store, or migrate an older one, each
        version in one transaction. An advisory lock makes other processes opening it meanwhile wait, then
        find the work done (looked at again in a transaction of its own: a fresh view of the catalog)."""
        async with await self._connect() as conn:
            if await self._check_version(conn) == SCHEMA_VERSION:
                return
            await conn.execute(_Q["migration_lock"])
            version = await self._check_version(conn)
            steps = [(SCHEMA_VERSION, schema("postgres"))] if version == 0 else migrations("postgres", version)
            for target, script in steps:
                async with conn.transaction():
                    await conn.execute(script.encode())
                    await conn.execute(_Q["set_schema_version"], {"version": target})
            if steps:
                self.migrated_from = version

    async def _check_version(self, conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(_Q["has_tables"])
        jobs, versions = await cur.fetchone() or (False, False)
        if not versions:
            if jobs:
                raise StoreError(f"database {self.url} has a jobs table but no asyncbatch schema version: "
                                 "use a database of its own for asyncbatch")
            return 0
        cur = await conn.execute(_Q["schema_version"])
        version = int((await cur.fetchone() or (0,))[0] or 0)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"job store {self.url} has schema version {version}, newer than this asyncbatch understands "
                f"({SCHEMA_VERSION}); upgrade asyncbatch"
            )
        return version

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        listener, self._listener = self._listener, None
        with anyio.CancelScope(shield=True):
            if listener is not None:
                await listener.close()
            if pool is not None:
                await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError("the job store is not open")
        return self._pool

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _problem(self, exc: BaseException) -> StoreError:
        """The driver's error as a StoreError a user can act on (the password never in it)."""
        text = self._scrub(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
            return StoreError(f"job store {self.url} cannot be written (is the database's disk full?): {text}")
        if isinstance(exc, psycopg.errors.InsufficientPrivilege | psycopg.errors.ReadOnlySqlTransaction):
            return StoreError(f"job store {self.url} refuses to be written (privileges, or a read-only "
                              f"replica): {text}")
        if isinstance(exc, psycopg.OperationalError):
            return StoreError(f"cannot use the job store {self.url}: {text}")
        return StoreError(f"job store {self.url}: {text}")

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        """Whether waiting may mend it: a lost connection, a server starting or stopping, a serialization
        failure. Not a wrong password, an unknown database, or a bug in a statement."""
        if isinstance(exc, psycopg_pool.PoolTimeout):
            return True
        if getattr(exc, "sqlstate", None) in _RETRY_STATES:
            return True
        if isinstance(exc, psycopg.errors.InvalidAuthorizationSpecification | psycopg.errors.InvalidCatalogName):
            return False
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            text = str(exc)
            return not (isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
                        and any(part in text for part in _FINAL_CONNECT))
        return False

    async def _retrying(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt`` until it succeeds, retrying transient failures with jittered exponential backoff for
        up to ``retry_for`` seconds; then a StoreError that says for how long the database was unreachable."""
        delay, deadline = 0.05, None
        while True:
            try:
                return await attempt()
            except psycopg.Error as exc:
                if isinstance(exc, psycopg_pool.PoolTimeout):
                    exc = await self._why_no_connection(exc)
                if not self._transient(exc):
                    raise self._problem(exc) from exc
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.retry_for
                if now >= deadline:
                    raise StoreError(
                        f"job store {self.url} unreachable for {self.retry_for:g}s "
                        f"(is PostgreSQL up?): {self._scrub(str(exc).strip())}"
                    ) from None
                log.warning("job store %s: %s; trying again in %.2fs", self.url,
                            self._scrub(str(exc).strip() or type(exc).__name__), delay)
                await anyio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                if self._pool is not None:  # the idle connections died with the one that failed, most likely
                    await self._pool.check()

    async def _why_no_connection(self, pool_timeout: psycopg.Error) -> psycopg.Error:
        """The pool had no connection to give: connect once ourselves, to learn why (a database dropped, a
        password changed: no wait mends those)."""
        try:
            await (await self._connect()).close()
        except psycopg.Error as exc:
            return exc
        return pool_timeout

    async def _tx(self, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """Run ``body`` in one write transaction, as a whole again after a lost connection.

        ``body`` must be replayable (its inputs in memory). If the connection drops during COMMIT, the next
        attempt first asks whether that transaction committed (by its id), and returns its result if it did.
        """
        pending: list[tuple[int, _T]] = []  # (xid, result) of a COMMIT whose outcome is unknown

        async def attempt() -> _T:
            async with self.pool.connection() as conn:
                if pending:
                    xid, result = pending[0]
                    if await _committed(conn, xid=xid):
                        return result
                    pending.clear()  # it did not land: run it again
                await conn.execute("BEGIN")
                try:
                    result = await body(conn)
                    cur = await conn.execute(_Q["xid"])
                    xid = int((await cur.fetchone() or (0,))[0])
                except BaseException:
                    with anyio.CancelScope(shield=True), suppress(psycopg.Error):  # gone with its connection
                        await conn.execute("ROLLBACK")
                    raise
                try:
                    with anyio.CancelScope(shield=True):
                        await conn.execute("COMMIT")
                except psycopg.Error as exc:
                    if self._transient(exc):
                        pending.append((xid, result))
                    raise
                return result

        return await self._retrying(attempt)

    async def _with_conn(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``fn`` on a pooled connection outside any transaction (reads), retried after a lost connection."""
        async def attempt() -> _T:
            async with self.pool.connection() as conn:
                return await fn(conn)

        return await self._retrying(attempt)

    async def _fetch_all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The rows of one read, outside any transaction."""
        return await self._with_conn(partial(_fetch, query=sql, params=params))

    async def _rows(self, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of the named query."""
        return await self._fetch_all(_Q[query], params or {})

    async def integrity_check(self) -> str:
        """``ok``, or which of the store's invariants rows break (PostgreSQL checks its own pages itself)."""
        names = ("requests in flight without a live shard", "shard members without a request",
                 "results without a request", "succeeded requests without their result")
        (counts,) = await self._rows("integrity")
        broken = [f"{n} {name}" for n, name in zip(counts, names, strict=True) if n]
        return "; ".join(broken) or "ok"

    async def ping(self) -> None:
        await self._rows("ping")

    async def wait_for_change(self, within: float) -> None:
        """Until a job is submitted, cancelled or changes status (``NOTIFY`` from the store's triggers), or
        ``within`` seconds. Without a listening connection (the database is away) it sleeps: the caller polls.

        Notifications that came while nobody waited are delivered first: a change between the caller's last look
        and this call still wakes it."""
        deadline = time.monotonic() + within
        with anyio.move_on_after(within):
            async with self._listen_lock:
                try:
                    listener = await self._listening()
                    while (left := deadline - time.monotonic()) > 0:
                        async for note in listener.notifies(timeout=left, stop_after=1):
                            if note.payload.startswith("job:"):
                                return
                except psycopg.Error as exc:
                    log.debug("job store %s: listening: %s", self.url, self._scrub(str(exc)))
                    await self._drop_listener()
                    await anyio.sleep(within)

    async def _listening(self) -> psycopg.AsyncConnection[Any]:
        if self._listener is None or self._listener.closed:
            listener = await self._connect()
            await listener.execute(f"LISTEN {CHANNEL}")
            self._listener = listener
        return self._listener

    async def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with anyio.CancelScope(shield=True):
                await listener.close()

    # --- jobs ----------------------------------------------------------------------------------------------

    async def create_job(self, job: Job, chunks: AsyncIterator[Sequence[NewRequest]]) -> int:
        """Insert the job and all its requests in one transaction, the requests by COPY (invariant 1).

        The chunks stream through once, so a transaction that lost its connection after reading some of them
        cannot be replayed: it rolls back whole, and the error says to submit again (a lost connection before
        the first chunk is retried here)."""
        started = False

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            nonlocal started
            if started:
                raise StoreError(f"the connection to the job store {self.url} was lost while job {job.id} was "
                                 "being stored: nothing of it was stored, submit it again")
            await self._check_new(conn, job)
            await conn.execute(_Q["insert_job"], _job_params(job))
            total = 0
            async for chunk in chunks:
                started = True
                await self._copy_requests(conn, job.id, chunk)
                total += len(chunk)
            await conn.execute(_Q["complete_job"], {"routes": _json(job.routes).decode(),
                                                    "content_hash": job.content_hash, "count": total, "id": job.id})
            return total

        return await self._tx(body)

    @staticmethod
    async def _check_new(conn: psycopg.AsyncConnection[Any], job: Job) -> None:
        cur = await conn.execute(_Q["job_exists"], {"job_id": job.id})
        if await cur.fetchone():
            raise JobConflictError(f"a job with id {job.id!r} exists already")
        if job.idempotency_key is not None:
            cur = await conn.execute(_Q["job_by_idempotency_key"], {"owner": job.owner, "key": job.idempotency_key})
            if row := await cur.fetchone():
                raise JobConflictError(f"idempotency key {job.idempotency_key!r} names job {row[0]} already")

    @staticmethod
    async def _copy_requests(conn: psycopg.AsyncConnection[Any], job_id: str, chunk: Sequence[NewRequest]) -> None:
        """COPY a chunk in (binary); when a custom_id is taken, name the first duplicate line of the chunk."""
        try:
            # a savepoint: after a duplicate, the job's transaction can still look for it
            async with conn.transaction(), conn.cursor().copy(_Q["copy_requests"]) as copy:
                copy.set_types(["text", "text", "text", "text", "text", "bytea", "int4"])
                for r in chunk:
                    await copy.write_row((job_id, r.custom_id, r.route, r.url, r.model, r.body, r.size))
        except psycopg.errors.UniqueViolation:
            cur = await conn.execute(_Q["taken_custom_ids"],
                                     {"job_id": job_id, "custom_ids": [r.custom_id for r in chunk]})
            seen = {str(row[0]) for row in await cur.fetchall()}
            for request in chunk:
                if request.custom_id in seen:
                    raise DuplicateCustomIdError(
                        "duplicate custom_id: every custom_id must be unique within a job",
                        line=request.line, custom_id=request.custom_id, field="custom_id",
                    ) from None
                seen.add(request.custom_id)
            raise

    async def find_job(
        self, *, idempotency_key: str | None = None, content_hash: str | None = None, batch_id: str | None = None,
        owner: str | None = None,
    ) -> Job | None:
        if idempotency_key is not None:
            rows = await self._rows("job_by_idempotency_key", {"owner": owner, "key": idempotency_key})
        elif content_hash is not None:
            rows = await self._rows("job_by_content_hash", {"owner": owner, "key": content_hash})
        elif batch_id is not None:
            rows = await self._rows("job_by_batch_id", {"owner": owner, "key": batch_id})
        else:
            return None
        return await self.get_job(str(rows[0][0])) if rows else None

    async def get_job(self, job_id: str, *, with_counts: bool = True) -> Job:
        rows = await self._rows("get_job", {"job_id": job_id})
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r} in {self.url}")
        job = _job(rows[0])
        if with_counts:
            job.counts = await self.counts(job_id)
        return job

    async def list_jobs(self, *, owner: str | None = None, unfinished: bool = False) -> list[Job]:
        jobs = [_job(row) for row in await self._rows("list_jobs", {"owner": owner, "unfinished": unfinished})]
        for job in jobs:
            job.counts = await self.counts(job.id)
        return jobs

    async def unfinished_job_ids(self) -> list[str]:
        return [str(row[0]) for row in await self._rows("unfinished_job_ids")]

    async def counts(self, job_id: str) -> RequestCounts:
        pending, in_flight, failed, cancelled, total = (await self._rows("count_states", {"job_id": job_id}))[0]
        return RequestCounts(
            total=total, completed=total - pending - in_flight - failed - cancelled, failed=failed,
            in_flight=in_flight, pending=pending, cancelled=cancelled,
        )

    async def set_job_status(self, job_id: str, status: JobStatus) -> bool:
        async def body(conn: psycopg.AsyncConnection[Any]) -> bool:
            cur = await conn.execute(_Q["set_job_status"],
                                     {"status": status.value, "now": time.time(), "job_id": job_id})
            return cur.rowcount > 0

        return await self._tx(body)

    async def set_route(self, job_id: str, route: str, spec: ProviderSpec) -> None:
        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            cur = await conn.execute(_Q["get_job_for_update"], {"job_id": job_id})
            row = await cur.fetchone()
            if row is None:
                raise JobNotFoundError(f"no job {job_id!r} in {self.url}")
            routes = _job(row).routes
            routes[route] = spec
            await conn.execute(_Q["set_routes"],
                               {"routes": _json(routes).decode(), "now": time.time(), "job_id": job_id})

        await self._tx(body)

    async def request_cancel(self, job_id: str) -> list[Shard]:
        """Mark the job cancelled-on-request, cancel its pending requests and its shards not yet created;
        returns the shards that exist at the provider (or may), for the caller to cancel there."""
        cancelled = Settlement(state=RequestState.CANCELLED, error_code="cancelled",
                               error_message="cancelled by the user")

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[Shard]:
            await conn.execute(_Q["request_cancel"], {"now": time.time(), "job_id": job_id})
            await conn.execute(_Q["cancel_pending"], {"job_id": job_id})
            cur = await conn.execute(_Q["job_shards"], {"job_id": job_id})
            remote: list[Shard] = []
            for shard in [_shard(row) for row in await cur.fetchall()]:
                if shard.phase in (ShardPhase.PLANNED, ShardPhase.UPLOADED):
                    cur = await conn.execute(_Q["shard_abandoned"], {"errors": "[]", "shard_id": shard.id,
                                                                     "owner": None, "token": None})
                    if cur.rowcount:
                        await _settle_rest(conn, shard.id, cancelled)
                elif shard.phase.is_live:
                    remote.append(shard)
            return remote

        return await self._tx(body)

    async def cancel_pending(self, job_id: str) -> None:
        await self._execute("cancel_pending", {"job_id": job_id})

    async def job_has_live_work(self, job_id: str) -> bool:
        unsettled, live_shards = (await self._rows("live_work", {"job_id": job_id}))[0]
        return bool(unsettled or live_shards)

    async def _execute(self, query: str, params: dict[str, Any]) -> int:
        """One statement in its own transaction; its row count."""
        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            return (await conn.execute(_Q[query], params)).rowcount

        return await self._tx(body)

    # --- planning ------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def planning(self, job_id: str) -> AsyncIterator[_Planning]:
        """One transaction in which the engine fills one shard; pending requests it reads are locked (FOR UPDATE
        SKIP LOCKED), so another planner of the job reads others. A lost connection replays the session."""
        session = _Planning(self, job_id)
        try:
            await session.begin()
            yield session
            await session.commit()
        finally:
            await session.end()

    # --- shards and leases ---------------------------------------------------------------------------------

    async def lease_holders(self, job_id: str) -> set[str]:
        return {str(row[0]) for row in await self._rows("lease_holders", {"job_id": job_id})}

    async def claim_shards(
        self, job_id: str, owner: str, lease_seconds: float, *, take_over: Collection[str] = ()
    ) -> list[Lease]:
        """Lease every live shard of the job that nobody holds, whose lease lapsed by the database's clock, or
        whose holder is in ``take_over``; rows being claimed by another worker right now are skipped."""
        params = {"owner": owner, "seconds": lease_seconds, "job_id": job_id, "take_over": sorted(take_over)}

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[Lease]:
            cur = await conn.execute(_Q["claim_shards"], params)
            return [Lease(shard_id=int(i), owner=owner, token=int(t)) for i, t in await cur.fetchall()]

        return await self._tx(body)

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> None:
        if not await self._execute("renew_lease", {"seconds": lease_seconds, **_lease(lease)}):
            raise LeaseLostError(f"lease on shard {lease.shard_id} lost")

    async def renew_leases(self, owner: str, lease_seconds: float) -> None:
        await self._execute("renew_leases", {"seconds": lease_seconds, "owner": owner})

    async def release(self, lease: Lease) -> None:
        await self._execute("release_lease", _lease(lease))

    async def get_shard(self, shard_id: int) -> Shard:
        rows = await self._rows("get_shard", {"shard_id": shard_id})
        if not rows:
            raise StoreError(f"no shard {shard_id}")
        return _shard(rows[0])

    async def job_shards(self, job_id: str) -> list[Shard]:
        return [_shard(row) for row in await self._rows("job_shards", {"job_id": job_id})]

    async def last_failed_with(self, job_id: str, codes: Collection[str]) -> Shard | None:
        rows = await self._rows("last_failed_with", {"job_id": job_id, "codes": sorted(codes)})
        return _shard(rows[0]) if rows else None

    async def spool_rows(self, shard_id: int, chunk: int = 2000) -> AsyncIterator[list[tuple[str, str, bytes]]]:
        """The shard's members (wire_id, url, body), a keyset page per read: no transaction stays open while
        the caller works on a chunk."""
        after = ""
        while rows := await self._rows("spool_rows", {"shard_id": shard_id, "after": after, "limit": chunk}):
            yield [(str(w), str(u), bytes(b)) for w, u, b in rows]
            after = str(rows[-1][0])

    async def _shard_update(self, query: str, params: dict[str, Any], lease: Lease) -> None:
        if not await self._execute(query, {**params, **_lease(lease)}):
            raise LeaseLostError(f"shard {lease.shard_id}: {query} did not apply (lease lost or phase moved on)")

    async def shard_uploaded(self, lease: Lease, file_id: str | None) -> None:
        await self._shard_update("shard_uploaded", {"file_id": file_id}, lease)

    async def shard_creating(self, lease: Lease) -> float:
        """Into ``creating``; returns when, by the database's clock (reconciliation searches from there)."""
        async def body(conn: psycopg.AsyncConnection[Any]) -> float:
            cur = await conn.execute(_Q["shard_creating"], _lease(lease))
            row = await cur.fetchone()
            if row is None:
                raise LeaseLostError(f"shard {lease.shard_id}: shard_creating did not apply (lease lost or phase "
                                     "moved on)")
            return float(row[0])

        return await self._tx(body)

    async def shard_reupload(self, lease: Lease, reason: str) -> None:
        await self._shard_update("shard_reupload", {"reason": reason}, lease)

    async def shard_submitted(self, lease: Lease, batch: RemoteBatch) -> None:
        try:
            await self._shard_update("shard_submitted", _batch_params(batch), lease)
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):  # the unique index on batch_id
                raise BatchClaimedError(f"batch {batch.id} is already recorded for another shard") from None
            raise

    async def shard_rebind(self, lease: Lease, batch: RemoteBatch) -> None:
        await self._shard_update("shard_rebind", _batch_params(batch), lease)

    async def recorded_batch_ids(self, *, since: float) -> set[str]:
        return {str(row[0]) for row in await self._rows("recorded_batch_ids", {"since": since})}

    async def shard_polled(self, lease: Lease, batch: RemoteBatch) -> None:
        """Record what a poll saw; a terminal status moves the shard to ``ended`` in the same transaction."""
        params = {**_batch_params(batch), "output_file_id": batch.output_file_id,
                  "error_file_id": batch.error_file_id, **_lease(lease)}

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            if not (await conn.execute(_Q["shard_polled"], params)).rowcount:
                raise LeaseLostError(f"shard {lease.shard_id}: lease lost while polling")
            if batch.status.is_terminal:
                await conn.execute(_Q["shard_ended"], _lease(lease))

        await self._tx(body)

    async def shard_note(self, lease: Lease, error: str | None) -> None:
        await self._shard_update("shard_note", {"error": error}, lease)

    async def shard_abandoned(self, lease: Lease, errors: list[BatchError], settle: Settlement) -> None:
        params = {"errors": _json(errors).decode(), **_lease(lease)}

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            if not (await conn.execute(_Q["shard_abandoned"], params)).rowcount:
                raise LeaseLostError(f"shard {lease.shard_id}: lease lost before it was abandoned")
            await _settle_rest(conn, lease.shard_id, settle)

        await self._tx(body)

    # --- ingestion -----------------------------------------------------------------------------------------

    async def member_requests(
        self, shard_id: int, wire_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, int]]:
        if wire_ids is None:
            rows = await self._rows("member_requests", {"shard_id": shard_id})
        else:
            rows = await self._rows("member_requests_of", {"shard_id": shard_id, "wire_ids": list(wire_ids)})
        return {str(w): (int(rid), int(att)) for w, rid, att in rows}

    async def ingest(
        self,
        lease: Lease,
        results: Iterable[ResultRow],
        orphans: Iterable[tuple[str, bytes]] = (),
        *,
        finish: Settlement | None = None,
        succeeded: Collection[int] = (),
    ) -> None:
        """Upsert a chunk of results and settle the requests they end, but successes; with ``finish``, settle
        ``succeeded``, then every member without a result, and mark the shard ``ingested``: one transaction
        (invariant 4), one statement per step whatever the chunk's size (its columns travel as arrays).

        The chunk is held in memory, so a transaction that lost its connection is replayed whole."""
        shard_id = lease.shard_id
        rows = list({(r.rid, r.attempt): r for r in results}.values())  # one upsert per key and statement
        unsettled = [r for r in rows if r.state is not RequestState.SUCCEEDED]
        settle = {"shard_id": shard_id, "rid": [r.rid for r in unsettled],
                  "state": [r.state.value for r in unsettled], "error_code": [r.error_code for r in unsettled],
                  "error_message": [r.error_message for r in unsettled]}
        strays = list(orphans)
        done = sorted(succeeded)

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            if not (await conn.execute(_Q["shard_note"], {"error": None, **_lease(lease)})).rowcount:
                raise LeaseLostError(f"shard {shard_id}: lease lost while ingesting")
            if rows:
                await self._copy_results(conn, rows, shard_id)
                await self.book_spend(conn, shard_id, [r.rid for r in rows])  # a gateway batch's spend
            if unsettled:
                await conn.execute(_Q["settle_requests"], settle)
            if strays:
                await conn.execute(_Q["upsert_orphans"], {"shard_id": shard_id, "wire_ids": [w for w, _ in strays],
                                                          "lines": [line for _, line in strays]})
            if finish is not None:
                if done:
                    await conn.execute(_Q["settle_succeeded"], {"rids": done, "shard_id": shard_id})
                await _settle_rest(conn, shard_id, finish)
                if not (await conn.execute(_Q["shard_ingested"], _lease(lease))).rowcount:
                    raise LeaseLostError(f"shard {shard_id}: lease lost while ingesting")

        await self._tx(body)

    async def _copy_results(self, conn: psycopg.AsyncConnection[Any], rows: Sequence[ResultRow], shard_id: int) -> None:
        """COPY a chunk (binary) into this connection's temporary table, then upsert it in one statement: the
        values travel as they are, with no per-row statement and no array to build."""
        if conn not in self._staging:
            await conn.execute(_Q["create_staged_results"])
            self._staging.add(conn)
        async with conn.cursor().copy(_Q["copy_staged_results"]) as copy:
            copy.set_types(_STAGED_TYPES)
            for r in rows:
                await copy.write_row((r.rid, r.attempt, shard_id, r.outcome.value, r.status_code, r.body, r.error_code,
                                      r.error_message, r.input_tokens, r.output_tokens, r.cached_tokens, r.model,
                                      r.request_id, r.line_id))
        await conn.execute(_Q["upsert_staged_results"])

    async def shard_tally(self, shard_id: int) -> tuple[int, int, int]:
        succeeded, failed, again = (await self._rows("shard_tally", {"shard_id": shard_id}))[0]
        return int(succeeded), int(failed), int(again)

    # --- results -------------------------------------------------------------------------------------------

    async def final_results(
        self, job_id: str, *, after_rid: int = 0, limit: int = 1000, unconsumed: bool = False
    ) -> list[StoredResult]:
        rows = await self._in_rid_order("final_results", {"job_id": job_id, "after": after_rid,
                                                          "all": not unconsumed, "limit": limit})
        return [_stored_result(row) for row in rows]

    async def attempt_results(
        self, job_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[StoredResult]:
        rows = await self._in_rid_order("all_attempt_results", {"job_id": job_id, "after_rid": after[0],
                                                                "after_attempt": after[1], "limit": limit})
        return [_stored_result(row) for row in rows]

    async def _in_rid_order(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """A page of a job's requests along the primary key, within the job's rid range. The planner is told to
        walk the key in order: before statistics know a new job, it would rather sort the whole job per page."""
        async def read(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.transaction():
                await conn.execute(_Q["walk_in_key_order"])
                return await (await conn.execute(_Q[query], params)).fetchall()

        return await self._with_conn(read)

    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]:
        return [(int(s), str(w), bytes(line)) for s, w, line in await self._rows("orphans", {"job_id": job_id})]

    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None:
        await self._execute("acknowledge", {"job_id": job_id, "custom_ids": list(custom_ids)})

    async def audit(self, job_id: str) -> JobAudit:
        await self.get_job(job_id, with_counts=False)
        params = {"job_id": job_id}
        wire_ids: dict[str, list[str]] = defaultdict(list)
        for custom_id, wire_id in await self._rows("audit_wire_ids", params):
            wire_ids[str(custom_id)].append(str(wire_id))
        successes: dict[str, list[int]] = defaultdict(list)
        for custom_id, attempt in await self._rows("audit_successes", params):
            successes[str(custom_id)].append(int(attempt))
        return JobAudit(
            requests={str(c): (_STATES[s], int(a)) for c, s, a in await self._rows("audit_requests", params)},
            wire_ids=dict(wire_ids), successes=dict(successes),
            tokens=[str(row[0]) for row in await self._rows("audit_tokens", params)],
            integrity=await self.integrity_check(),
        )

    async def stats(self) -> StoreStats:
        pending, in_flight, failed, cancelled, total = (await self._rows("stats_requests"))[0]
        return StoreStats(
            jobs={str(k): int(n) for k, n in await self._rows("stats_jobs")},
            shards={str(k): int(n) for k, n in await self._rows("stats_shards")},
            batches={str(k): int(n) for k, n in await self._rows("stats_batches")},
            requests={"pending": pending, "in_flight": in_flight, "failed": failed, "cancelled": cancelled,
                      "succeeded": total - pending - in_flight - failed - cancelled},
        )

    # --- moving a store (``asyncbatch db copy``) -------------------------------------------------------------

    async def dump(self, chunk: int = 10_000) -> AsyncIterator[tuple[str, list[tuple[Any, ...]]]]:
        """Every row of every table of ``TABLES`` (parents first), a keyset page per read."""
        for table in TABLES:
            keys = [table.names.index(k) for k in table.key]
            after: dict[str, Any] | None = None
            while True:
                query = dump_query(table, first=after is None, marker="%({})s")
                params = {**(after or {}), "limit": chunk}
                rows = await self._fetch_all(query, params)
                if not rows:
                    break
                yield table.name, rows
                after = {k: rows[-1][i] for k, i in zip(table.key, keys, strict=True)}

    async def load(self, dump: AsyncIterator[tuple[str, list[tuple[Any, ...]]]]) -> dict[str, int]:
        """Fill an empty store with a dump by COPY, in one transaction; returns the rows of each table. The
        identity columns go on after the highest id copied. The dump streams through once: a connection lost
        midway rolls the whole copy back, and the error says to run it again."""
        tables = {table.name: table for table in TABLES}
        started = False

        async def body(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
            nonlocal started
            if started:
                raise StoreError(f"the connection to the job store {self.url} was lost during the copy: nothing "
                                 "was copied, run it again")
            if (await (await conn.execute(_Q["job_count"])).fetchone() or (0,))[0]:
                raise StoreError(f"job store {self.url} holds jobs already: a copy goes into a new store")
            counts: dict[str, int] = {}
            async for name, rows in dump:
                started = True
                async with conn.cursor().copy(f"COPY {name} ({', '.join(tables[name].names)}) FROM STDIN") as copy:
                    for row in rows:
                        await copy.write_row(row)
                counts[name] = counts.get(name, 0) + len(rows)
            await conn.execute(_Q["restart_ids"])
            await conn.execute(_Q["derive_job_ranges"])
            return counts

        return await self._tx(body)


async def _fetch(conn: psycopg.AsyncConnection[Any], *, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    return await (await conn.execute(query.encode(), params)).fetchall()


class _Planning:
    """A planning session: one transaction on one connection, with a journal of what it did.

    If the connection drops, the journal is replayed in a new transaction: the same reads must give the same
    requests (they were locked; unless another planner took them meanwhile, the session goes on as if nothing
    happened), and the shard is inserted again (its new id set on the caller's ``PlannedShard``).
    """

    def __init__(self, store: PostgresStore, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._journal: list[tuple[str, Any, Any]] = []
        self._after: dict[str, Any] | None = None  # the key of the last request read: the next page starts there

    async def begin(self) -> None:
        async def attempt() -> None:
            await self._close()
            conn = await self._store.pool.getconn()
            self._conn = conn
            await conn.execute("BEGIN")
            for op, args, expected in list(self._journal):
                if await self._apply(op, args) != expected:
                    raise PlanningConflictError(
                        f"job {self._job_id}: planning was cut off by a lost connection, and another worker planned "
                        "the same requests meanwhile: nothing of this planning was stored")

        await self._store._retrying(attempt)

    async def _call(self, op: str, args: Any) -> Any:
        while True:
            try:
                result = await self._apply(op, args)
            except psycopg.Error as exc:
                if not self._store._transient(exc):
                    raise self._store._problem(exc) from exc
                await self.begin()  # replays the journal in a new transaction, then this call is made again
                continue
            self._journal.append((op, args, result))
            return result

    async def _apply(self, op: str, args: Any) -> Any:
        conn = self._conn
        assert conn is not None
        if op == "pending":
            limit, after = args
            if after is None:
                cur = await conn.execute(_Q["pending_for_planning"], {"job_id": self._job_id, "limit": limit})
            else:
                cur = await conn.execute(_Q["pending_after"], {"job_id": self._job_id, "limit": limit, **after})
            return [PendingRequest(rid=r[0], custom_id=r[1], route=r[2], url=r[3], model=r[4], size=r[5],
                                   attempts=r[6]) for r in await cur.fetchall()]
        if op == "add_shard":
            shard: PlannedShard = args
            cur = await conn.execute(_Q["insert_shard"], {"job_id": self._job_id, "token": shard.token,
                                                          "route": shard.route, "endpoint": shard.endpoint,
                                                          "model": shard.model})
            shard.id = int((await cur.fetchone() or (0,))[0])
            return None  # the id may change on a replay; the caller reads it from the shard
        shard, members = args
        await conn.execute(_Q["insert_members"], {
            "shard_id": shard.id, "wire_ids": [w for _, w, _ in members], "rids": [rid for rid, _, _ in members],
            "attempts": [a for _, _, a in members]})
        cur = await conn.execute(_Q["assign_requests"], {"shard_id": shard.id,
                                                         "rids": [rid for rid, _, _ in members]})
        if cur.rowcount != len(members):  # the session's own locked reads: nobody else can have taken them
            raise StoreError(f"shard {shard.id}: {len(members) - cur.rowcount} of its requests were not pending")
        await conn.execute(_Q["size_shard"], {"attempt": shard.attempt, "count": shard.request_count,
                                              "bytes": shard.bytes, "shard_id": shard.id})
        return None

    async def pending(self, limit: int) -> list[PendingRequest]:
        rows: list[PendingRequest] = await self._call("pending", (limit, self._after))
        if rows:
            last = rows[-1]
            self._after = {"route": last.route, "url": last.url, "model": last.model or "", "rid": last.rid}
        return rows

    async def add_shard(self, shard: PlannedShard) -> int:
        await self._call("add_shard", shard)
        return shard.id

    async def add_members(self, shard: PlannedShard, members: Sequence[tuple[int, str, int]]) -> None:
        await self._call("add_members", (shard, list(members)))

    async def commit(self) -> None:
        """COMMIT; a connection lost during it is asked by transaction id whether it landed, else replayed."""
        while True:
            conn = self._conn
            assert conn is not None
            try:
                cur = await conn.execute(_Q["xid"])
                xid = int((await cur.fetchone() or (0,))[0])
            except psycopg.Error as exc:
                if not self._store._transient(exc):
                    raise self._store._problem(exc) from exc
                await self.begin()
                continue
            try:
                with anyio.CancelScope(shield=True):
                    await conn.execute("COMMIT")
                return
            except psycopg.Error as exc:
                if not self._store._transient(exc):
                    raise self._store._problem(exc) from exc
            if await self._store._with_conn(partial(_committed, xid=xid)):
                return
            await self.begin()

    async def end(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            with suppress(psycopg.Error):
                await conn.execute("ROLLBACK")
        await self._store.pool.putconn(conn)


async def _committed(conn: psycopg.AsyncConnection[Any], *, xid: int) -> bool:
    """Whether transaction ``xid`` committed (waiting while it is still being resolved). An id "in the future"
    is one a server that restarted since never logged: its transaction wrote nothing, so it did not commit."""
    while True:
        try:
            cur = await conn.execute(_Q["xid_status"], {"xid": xid})
        except psycopg.errors.InvalidParameterValue:
            return False
        status = (await cur.fetchone() or (None,))[0]
        if status != "in progress":
            return bool(status == "committed")
        await anyio.sleep(0.05)


async def _settle_rest(conn: psycopg.AsyncConnection[Any], shard_id: int, settle: Settlement) -> None:
    params = {"shard_id": shard_id, "error_code": settle.error_code, "error_message": settle.error_message}
    if settle.refund:
        await conn.execute(_Q["refund_shard_members"], params)
    elif settle.state is RequestState.PENDING:
        await conn.execute(_Q["requeue_shard_members"], {**params, "max_attempts": settle.max_attempts})
    else:
        await conn.execute(_Q["cancel_shard_members"], {**params, "state": settle.state.value})


def _lease(lease: Lease) -> dict[str, Any]:
    return {"shard_id": lease.shard_id, "owner": lease.owner, "token": lease.token}


def _batch_params(batch: RemoteBatch) -> dict[str, Any]:
    return {"batch_id": batch.id, "status": batch.status.value, "counts": _json(batch.counts).decode(),
            "errors": _json(batch.errors).decode(), "created_at": batch.created_at or None}


def redact(url: str) -> str:
    """The URL without its password (in the user part or as a ``password=`` parameter), for messages."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("password", "sslpassword")]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/"), ""))
