"""The default job store: one SQLite file in WAL mode, driven through aiosqlite.

Every state change is one short transaction (``BEGIN IMMEDIATE`` so that writers queue instead of failing
half-way), and every shard mutation names the lease owner, so a worker that lost its lease changes nothing.
One connection per store object; an anyio lock keeps transactions of concurrent tasks from interleaving.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
from msgspec.structs import astuple

from ..errors import DuplicateCustomIdError, JobNotFoundError, SchemaVersionError, StoreError
from ..model import (
    BatchStatus,
    Job,
    JobStatus,
    RequestCounts,
    RequestState,
    Shard,
    ShardPhase,
)
from ..providers.base import BatchError, RemoteBatch, ShardLimits
from .base import (
    BatchClaimedError,
    LeaseLostError,
    NewRequest,
    PlannedShard,
    ResultRow,
    Settlement,
    StoredResult,
    WireIdFn,
)
from .sql import SCHEMA_VERSION, queries, schema

_Q = queries()
CACHE_KIB = 8 * 1024
PAGE_SIZE = 16 * 1024
PLAN_PAGE = 5000  # pending requests read at a time while planning
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024
_json = msgspec.json.encode
_RID = operator.attrgetter("rid")
_STATES = {state.value: state for state in RequestState}  # a dict lookup; RequestState(x) costs 1.5 us a row


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_owner() -> str:
    """A lease owner id: host and pid let a restarted process take over leases of a dead one at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


def _dead_owner(owner: str | None) -> bool:
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    return host == socket.gethostname() and pid_text.isdigit() and not _pid_alive(int(pid_text))


class SQLiteStore:
    """Durable store of jobs, requests, shards and results in one SQLite file (``":memory:"`` works too)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 60.0) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # --- connection ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # owner-only from the first byte
            except OSError as exc:
                raise StoreError(self._os_problem(exc)) from exc
            os.close(fd)
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(self._problem(exc)) from exc
        self._db = db
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            await self._check_version(db)  # before anything writes: a newer store is left untouched
            # A new store gets 16 KiB pages (an existing one keeps its own: this is then a no-op): result rows
            # of about 1 KB fill 4 KiB pages four at a time, and every page is a WAL frame written at commit.
            # Measured on 50,000 results: inserting, settling and committing take half the time.
            await db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            # Throughput, not durability (still WAL + NORMAL): an 8 MiB page cache keeps an ingest chunk's hot
            # pages (2 MiB spilled them to the WAL mid-transaction and read them back; 16 MiB was no faster),
            # and a checkpoint every 64 MiB of WAL instead of every 4 MiB (each rewrites pages and syncs).
            # Both are bounded: memory stays flat whatever the job size.
            await db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            async with db.execute("PRAGMA page_size") as cur:
                page_size = (await cur.fetchone() or (PAGE_SIZE,))[0]
            await db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size}")
            await self._migrate(db)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(self._problem(exc)) from exc
        except BaseException:
            await self.close()
            raise

    async def _check_version(self, db: aiosqlite.Connection) -> int:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"job store {self.path} has schema version {version}, newer than this asyncbatch "
                f"understands ({SCHEMA_VERSION}); upgrade asyncbatch"
            )
        return version

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        if await self._check_version(db) < SCHEMA_VERSION:
            await db.execute("BEGIN IMMEDIATE")
            for statement in _statements(schema()):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await db.execute("COMMIT")

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the job store is not open")
        return self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; SQLite errors become StoreError, nothing half-done survives."""
        async with self._lock:
            db = self.db
            try:
                await db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(self._problem(exc)) from exc
            try:
                yield db
                with anyio.CancelScope(shield=True):
                    await db.execute("COMMIT")
            except BaseException as exc:
                # SQLite has already rolled back after some errors (a full disk, an I/O error): only roll
                # back what is still open, so that the error the caller sees is the one that happened.
                with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        await db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(self._problem(exc)) from exc
                raise

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            try:
                async with self.db.execute(sql, params) as cur:
                    return list(await cur.fetchall())
            except sqlite3.Error as exc:
                raise StoreError(self._problem(exc)) from exc

    def _problem(self, exc: sqlite3.Error) -> str:
        """What went wrong, in words a user can act on, with SQLite's own message kept."""
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            what = f"is locked by another process (waited {self._busy_timeout:g}s)"
        elif name.startswith("SQLITE_READONLY"):
            what = "is read-only"
        elif name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
            what = "cannot be written (is the disk full?)"
        elif name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
            what = "is damaged or not an asyncbatch job store"
        else:
            return f"job store {self.path}: {exc}"
        return f"job store {self.path} {what}: {exc}"

    def _os_problem(self, exc: OSError) -> str:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and os.path.exists(self.path):
            return f"job store {self.path} is read-only: {exc.strerror}"
        return f"cannot create job store {self.path}: {exc.strerror or exc}"

    async def integrity_check(self) -> str:
        rows = await self._read("PRAGMA integrity_check")
        return str(rows[0][0])

    # --- jobs ----------------------------------------------------------------------------------------------

    async def create_job(self, job: Job, chunks: AsyncIterator[Sequence[NewRequest]]) -> int:
        """Insert the job and all its requests in one transaction: all or nothing (invariant 1)."""
        total = 0
        async with self._tx() as db:
            await db.execute(
                _Q["insert_job"],
                {
                    "id": job.id, "provider": job.provider, "base_url": job.base_url,
                    "provider_options": _json(job.provider_options).decode(), "endpoint": job.endpoint,
                    "completion_window": job.completion_window, "max_attempts": job.max_attempts,
                    "metadata": _json(job.metadata).decode(), "status": job.status.value,
                    "created_at": job.created_at, "updated_at": job.updated_at,
                },
            )
            async for chunk in chunks:
                await self._insert_requests(db, job.id, chunk)
                total += len(chunk)
        return total

    @staticmethod
    async def _insert_requests(db: aiosqlite.Connection, job_id: str, chunk: Sequence[NewRequest]) -> None:
        """Bulk insert; when a custom_id is taken, redo the chunk row by row to name the duplicate line."""
        await db.execute("SAVEPOINT chunk")
        before = db.total_changes
        rows = [(job_id, r.custom_id, r.url, r.model, r.body, r.size) for r in chunk]
        await db.executemany(_Q["insert_request"], rows)
        if db.total_changes - before != len(chunk):
            await db.execute("ROLLBACK TO chunk")
            for request, row in zip(chunk, rows, strict=True):
                cur = await db.execute(_Q["insert_request"], row)
                if not cur.rowcount:
                    raise DuplicateCustomIdError(
                        "duplicate custom_id: every custom_id must be unique within a job",
                        line=request.line, custom_id=request.custom_id, field="custom_id",
                    )
        await db.execute("RELEASE chunk")

    async def get_job(self, job_id: str, *, with_counts: bool = True) -> Job:
        """The job; ``with_counts=False`` skips counting its requests (pollers read the job often)."""
        rows = await self._read(_Q["get_job"], (job_id,))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r} in {self.path}")
        job = _job(rows[0])
        if with_counts:
            job.counts = await self.counts(job_id)
        return job

    async def list_jobs(self) -> list[Job]:
        jobs = [_job(row) for row in await self._read(_Q["list_jobs"])]
        for job in jobs:
            job.counts = await self.counts(job.id)
        return jobs

    async def counts(self, job_id: str) -> RequestCounts:
        pending, in_flight, failed, cancelled, total = (await self._read(_Q["count_states"], (job_id,)))[0]
        return RequestCounts(
            total=total, completed=total - pending - in_flight - failed - cancelled, failed=failed,
            in_flight=in_flight, pending=pending, cancelled=cancelled,
        )

    async def set_job_status(self, job_id: str, status: JobStatus) -> bool:
        async with self._tx() as db:
            cur = await db.execute(_Q["set_job_status"], (status.value, time.time(), job_id, status.value))
            return cur.rowcount > 0

    async def request_cancel(self, job_id: str) -> list[Shard]:
        """Mark the job cancelled-on-request, cancel its pending requests and its shards not yet created.

        Returns the shards that exist at the provider (or may): the caller cancels those remotely.
        """
        async with self._tx() as db:
            await db.execute(_Q["request_cancel"], (time.time(), job_id))
            await db.execute(_Q["cancel_pending"], (job_id,))
            async with db.execute(_Q["job_shards"], (job_id,)) as cur:
                shards = [_shard(row) for row in await cur.fetchall()]
            remote: list[Shard] = []
            for shard in shards:
                if shard.phase in (ShardPhase.PLANNED, ShardPhase.UPLOADED):
                    await db.execute(_Q["shard_abandoned"], ("[]", shard.id))
                    await db.execute(
                        _Q["cancel_shard_members"],
                        (RequestState.CANCELLED.value, "cancelled", "cancelled by the user", shard.id),
                    )
                elif shard.phase.is_live:
                    remote.append(shard)
            return remote

    async def cancel_pending(self, job_id: str) -> None:
        async with self._tx() as db:
            await db.execute(_Q["cancel_pending"], (job_id,))

    async def job_has_live_work(self, job_id: str) -> bool:
        rows = await self._read(_Q["live_work"], (job_id, job_id))
        unsettled, live_shards = rows[0]
        return bool(unsettled or live_shards)

    # --- planning ------------------------------------------------------------------------------------------

    async def plan_shard(self, job: Job, limits: ShardLimits, wire_id: WireIdFn) -> PlannedShard | None:
        """Put pending requests of the job into one new shard (one endpoint and model, under limits); None
        when none is pending.

        Membership is committed here, before any file is built (invariant 2); the attempt counter of each
        request goes up by one. One shard per transaction, so that the manager uploads a shard while it plans
        the next.
        """
        async with self._tx() as db:
            return await self._plan_shard(db, job, limits, wire_id)

    @staticmethod
    async def _plan_shard(
        db: aiosqlite.Connection, job: Job, limits: ShardLimits, wire_id: WireIdFn
    ) -> PlannedShard | None:
        """Fill one shard from the job's pending requests, a page at a time.

        Planned requests stop being pending, so each read starts where the last one ended: memory holds one
        page, whatever the size of the shard or of the job.
        """
        shard: PlannedShard | None = None
        while shard is None or shard.request_count < limits.max_requests:
            page = min(PLAN_PAGE, limits.max_requests - (shard.request_count if shard else 0))
            rows = list(await db.execute_fetchall(_Q["pending_for_planning"], (job.id, page)))
            if not rows:
                break
            if shard is None:
                shard = PlannedShard(endpoint=rows[0][2], model=rows[0][3], request_count=0, bytes=0)
                cur = await db.execute(_Q["insert_shard"], (job.id, shard.token, shard.endpoint, shard.model,
                                                            time.time()))
                assert cur.lastrowid is not None
                shard.id = cur.lastrowid
            members: list[tuple[int, str, int]] = []  # (rid, custom_id, attempt in this shard)
            full = False
            for rid, custom_id, url, model, size, attempts in rows:
                if shard.request_count and (
                    (url, model) != (shard.endpoint, shard.model) or shard.bytes + size > limits.max_bytes
                ):
                    full = True
                    break
                shard.request_count += 1
                shard.bytes += size
                shard.attempt = max(shard.attempt, attempts + 1)
                members.append((rid, custom_id, attempts + 1))
            token, shard_id = shard.token, shard.id
            await db.executemany(
                _Q["insert_member"], ((shard_id, wire_id(cid, rid, token), rid, att) for rid, cid, att in members)
            )
            await db.execute(_Q["assign_requests"], (shard_id, _json([rid for rid, _, _ in members]).decode()))
            if full or len(rows) < page:
                break
        if shard is not None:
            await db.execute(_Q["size_shard"], (shard.attempt, shard.request_count, shard.bytes, shard.id))
        return shard

    # --- shards and leases ---------------------------------------------------------------------------------

    async def claim_shards(self, job_id: str, owner: str, lease_seconds: float) -> list[int]:
        """Lease every live shard of the job that nobody else holds (or whose holder died or lapsed)."""
        claimed: list[int] = []
        now = time.time()
        async with self._tx() as db:
            async with db.execute(_Q["claimable_shards"], (job_id, owner, now)) as cur:
                rows = await cur.fetchall()
            for shard_id, lease_owner, _expires in rows:
                dead = lease_owner if _dead_owner(lease_owner) else ""
                cur = await db.execute(
                    _Q["claim_shard"],
                    {"owner": owner, "expires": now + lease_seconds, "id": shard_id, "now": now, "dead": dead},
                )
                if cur.rowcount:
                    claimed.append(shard_id)
        return claimed

    async def renew_lease(self, shard_id: int, owner: str, lease_seconds: float) -> None:
        async with self._tx() as db:
            cur = await db.execute(_Q["renew_lease"], (time.time() + lease_seconds, shard_id, owner))
            if not cur.rowcount:
                raise LeaseLostError(f"lease on shard {shard_id} lost")

    async def renew_leases(self, owner: str, lease_seconds: float) -> None:
        """Extend every lease ``owner`` holds: one statement, however many shards it drives."""
        async with self._tx() as db:
            await db.execute(_Q["renew_leases"], (time.time() + lease_seconds, owner))

    async def release(self, shard_id: int, owner: str) -> None:
        async with self._tx() as db:
            await db.execute(_Q["release_lease"], (shard_id, owner))

    async def get_shard(self, shard_id: int) -> Shard:
        rows = await self._read(_Q["get_shard"], (shard_id,))
        if not rows:
            raise StoreError(f"no shard {shard_id}")
        return _shard(rows[0])

    async def job_shards(self, job_id: str) -> list[Shard]:
        return [_shard(row) for row in await self._read(_Q["job_shards"], (job_id,))]

    async def last_failed_with(self, job_id: str, codes: Collection[str]) -> Shard | None:
        """The job's newest shard whose batch failed with one of ``codes`` (in its batch errors)."""
        rows = await self._read(_Q["last_failed_with"], (job_id, _json(sorted(codes)).decode()))
        return _shard(rows[0]) if rows else None

    async def spool_rows(self, shard_id: int, chunk: int = 2000) -> AsyncIterator[list[tuple[str, str, bytes]]]:
        """The shard's members (wire_id, url, body), in chunks: memory stays flat whatever the shard size.

        Each chunk is its own read (keyset on wire_id), so no lock is held while the caller works on a
        chunk: a consumer cancelled mid-way cannot leave the store locked.
        """
        after = ""
        while rows := await self._read(_Q["spool_rows"], (shard_id, after, chunk)):
            yield [(str(w), str(u), bytes(b)) for w, u, b in rows]
            after = str(rows[-1][0])

    async def _shard_update(self, query: str, params: Sequence[Any], shard_id: int) -> None:
        async with self._tx() as db:
            cur = await db.execute(_Q[query], params)
            if not cur.rowcount:
                raise LeaseLostError(f"shard {shard_id}: {query} did not apply (lease lost or phase moved on)")

    async def shard_uploaded(self, shard_id: int, owner: str, file_id: str | None) -> None:
        await self._shard_update("shard_uploaded", (file_id, shard_id, owner), shard_id)

    async def shard_creating(self, shard_id: int, owner: str) -> float:
        now = time.time()
        await self._shard_update("shard_creating", (now, shard_id, owner), shard_id)
        return now

    async def shard_submitted(self, shard_id: int, owner: str, batch: RemoteBatch) -> None:
        try:
            await self._shard_update(
                "shard_submitted",
                (batch.id, batch.status.value, _json(batch.counts), _json(batch.errors), shard_id, owner),
                shard_id,
            )
        except sqlite3.IntegrityError as exc:  # the unique index on batch_id
            raise BatchClaimedError(f"batch {batch.id} is already recorded for another shard") from exc

    async def recorded_batch_ids(self, *, since: float) -> set[str]:
        """Provider batch ids of shards planned since ``since``: reconciliation must not adopt them."""
        return {str(row[0]) for row in await self._read(_Q["recorded_batch_ids"], (since,))}

    async def shard_polled(self, shard_id: int, owner: str, batch: RemoteBatch) -> None:
        """Record what a poll saw; a terminal status moves the shard to ``ended`` in the same transaction."""
        async with self._tx() as db:
            cur = await db.execute(
                _Q["shard_polled"],
                (batch.status.value, _json(batch.counts), _json(batch.errors), batch.output_file_id,
                 batch.error_file_id, shard_id, owner),
            )
            if not cur.rowcount:
                raise LeaseLostError(f"shard {shard_id}: lease lost while polling")
            if batch.status.is_terminal:
                await db.execute(_Q["shard_ended"], (time.time(), shard_id, owner))

    async def shard_abandoned(
        self, shard_id: int, errors: list[BatchError], settle: Settlement
    ) -> None:
        """A shard that will never reach the provider: its members are re-queued or ended in one go."""
        async with self._tx() as db:
            await db.execute(_Q["shard_abandoned"], (_json(errors).decode(), shard_id))
            await self._settle_rest(db, shard_id, settle)

    @staticmethod
    async def _settle_rest(db: aiosqlite.Connection, shard_id: int, settle: Settlement) -> None:
        if settle.refund:
            await db.execute(_Q["refund_shard_members"], (settle.error_code, settle.error_message, shard_id))
        elif settle.state is RequestState.PENDING:
            await db.execute(
                _Q["requeue_shard_members"], (settle.max_attempts, settle.error_code, settle.error_message, shard_id)
            )
        else:
            await db.execute(
                _Q["cancel_shard_members"], (settle.state.value, settle.error_code, settle.error_message, shard_id)
            )

    # --- ingestion -----------------------------------------------------------------------------------------

    async def member_requests(
        self, shard_id: int, wire_ids: Sequence[str] | None = None
    ) -> dict[str, tuple[int, int]]:
        """wire_id -> (rid, attempt) for the members of the shard named in ``wire_ids`` (default: all), settled
        ones too: re-ingesting after a crash must recognise them, and the guarded updates leave them as they
        are. Ingestion asks for one chunk's ids at a time, so memory does not grow with the shard."""
        if wire_ids is None:
            rows = await self._read(_Q["member_requests"], (shard_id,))
        else:
            rows = await self._read(_Q["member_requests_of"], (shard_id, _json(wire_ids).decode()))
        return {str(w): (int(rid), int(att)) for w, rid, att in rows}

    async def ingest(
        self,
        shard_id: int,
        owner: str,
        results: Iterable[ResultRow],
        orphans: Iterable[tuple[str, bytes]] = (),
        *,
        finish: Settlement | None = None,
        succeeded: Collection[int] = (),
    ) -> None:
        """Upsert a chunk of results and settle the requests they end, except those that succeeded; with
        ``finish``, settle ``succeeded`` (the rids whose result made them succeed, from every chunk), then
        every member that got no result, and mark the shard ``ingested``, in one transaction (invariant 4).

        Successes, nearly all requests, are settled once per shard: each chunk of shuffled results touches
        rows all over the shard's range of requests, so settling them per chunk rewrote every page of it per
        chunk. Until the shard is ingested they count as in flight; a crash before that ingests them again.
        Providers return results in any order. A chunk is written in request order, so its index entries go
        in one sweep and its rows lie in request order, where reading results back finds them together
        (measured on 50,000 results in shuffled order: writing 20% faster, reading back 3x).
        """
        rows = sorted(results, key=_RID)  # a shard's results have one row per request
        async with self._tx() as db:
            if rows:
                params = [(*astuple(r), shard_id) for r in rows]  # one binding serves both statements
                await db.executemany(_Q["upsert_result"], params)
                await db.executemany(_Q["settle_request"], [
                    p for r, p in zip(rows, params, strict=True) if r.state is not RequestState.SUCCEEDED
                ])
            orphan_rows = [(shard_id, w, line) for w, line in orphans]
            if orphan_rows:
                await db.executemany(_Q["upsert_orphan"], orphan_rows)
            if finish is not None:
                if succeeded:
                    await db.execute(_Q["settle_succeeded"], (_json(sorted(succeeded)).decode(), shard_id))
                await self._settle_rest(db, shard_id, finish)
                cur = await db.execute(_Q["shard_ingested"], (shard_id, owner))
                if not cur.rowcount:
                    raise LeaseLostError(f"shard {shard_id}: lease lost while ingesting")

    async def shard_tally(self, shard_id: int) -> tuple[int, int, int]:
        """What an ingested shard's members came to: (succeeded, failed or cancelled, sent again)."""
        succeeded, failed, again = (await self._read(_Q["shard_tally"], (shard_id,)))[0]
        return int(succeeded), int(failed), int(again)

    # --- results -------------------------------------------------------------------------------------------

    async def final_results(
        self, job_id: str, *, after_rid: int = 0, limit: int = 1000, unconsumed: bool = False
    ) -> list[StoredResult]:
        rows = await self._read(_Q["final_results"], (job_id, after_rid, 0 if unconsumed else 1, limit))
        return [_stored_result(row, attempt_col=True) for row in rows]

    async def attempt_results(
        self, job_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[StoredResult]:
        rows = await self._read(_Q["all_attempt_results"], (job_id, after[0], after[1], limit))
        return [_stored_result(row, attempt_col=True) for row in rows]

    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]:
        return [(int(s), str(w), bytes(line)) for s, w, line in await self._read(_Q["orphans"], (job_id,))]

    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None:
        async with self._tx() as db:
            await db.executemany(_Q["acknowledge"], [(job_id, cid) for cid in custom_ids])


def _statements(script: str) -> list[str]:
    """Split the schema script into statements (it has no ``--`` or ``;`` inside literals)."""
    body = "\n".join(line.partition("--")[0] for line in script.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (job_id, provider, base_url, options, endpoint, window, max_attempts, metadata, status, cancel, created,
     updated) = row
    return Job(
        id=job_id, provider=provider, base_url=base_url, provider_options=msgspec.json.decode(options),
        endpoint=endpoint, completion_window=window,
        max_attempts=max_attempts, metadata=msgspec.json.decode(metadata), status=JobStatus(status),
        cancel_requested=bool(cancel), created_at=created, updated_at=updated,
    )


def _shard(row: sqlite3.Row | tuple[Any, ...]) -> Shard:
    (shard_id, job_id, attempt, token, phase, endpoint, model, count, size, file_id, batch_id, batch_status,
     output_file_id, error_file_id, counts, errors, created, creating, ended) = row
    return Shard(
        id=shard_id, job_id=job_id, attempt=attempt, token=token, phase=ShardPhase(phase), endpoint=endpoint,
        model=model, request_count=count, bytes=size, file_id=file_id, batch_id=batch_id,
        batch_status=BatchStatus(batch_status) if batch_status else None, output_file_id=output_file_id,
        error_file_id=error_file_id, provider_counts=msgspec.json.decode(counts),
        errors=msgspec.json.decode(errors), created_at=created, creating_at=creating, ended_at=ended,
    )


def _stored_result(row: sqlite3.Row | tuple[Any, ...], *, attempt_col: bool) -> StoredResult:
    (rid, custom_id, state, attempt, req_code, req_message, outcome, status_code, body, code, message,
     input_tokens, output_tokens, cached_tokens, model, request_id, line_id, batch_id) = row
    return StoredResult(
        rid=rid, custom_id=custom_id, state=_STATES[state], attempt=attempt,
        request_error_code=req_code, request_error_message=req_message, outcome=outcome,
        status_code=status_code, body=bytes(body) if body is not None else None, error_code=code,
        error_message=message, input_tokens=input_tokens, output_tokens=output_tokens,
        cached_tokens=cached_tokens, model=model, request_id=request_id, line_id=line_id, batch_id=batch_id,
    )
