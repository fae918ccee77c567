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
import sqlite3
import time
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec
from msgspec.structs import astuple

from ..errors import (
    BatchClaimedError,
    DuplicateCustomIdError,
    JobConflictError,
    JobNotFoundError,
    LeaseLostError,
    SchemaVersionError,
    StoreError,
)
from ..model import (
    BatchError,
    BatchStatus,
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
from .sql import (
    SCHEMA_VERSION,
    TABLES,
    dump_query,
    insert_query,
    migrations,
    portable,
    queries,
    schema,
    statements,
)
from .sqlite_gateway import SQLiteGateway

_Q = queries("sqlite")
#: ``PRAGMA application_id`` of an asyncbatch job store ("abst"), so that no other application's file is taken
#: for one. Stores made before it have 0 and are known by their tables.
APPLICATION_ID = 0x61627374
STORE_TABLES = frozenset({"jobs", "requests", "shards", "shard_members", "results"})
CACHE_KIB = 8 * 1024
PAGE_SIZE = 16 * 1024
WAL_CHECKPOINT_BYTES = 64 * 1024 * 1024
CHANGE_POLL = 0.25  # seconds between looks at PRAGMA data_version while waiting for another writer
_json = msgspec.json.encode
_RID = operator.attrgetter("rid")
_STATES = {state.value: state for state in RequestState}  # a dict lookup; RequestState(x) costs 1.5 us a row
_routes = msgspec.json.Decoder(dict[str, ProviderSpec])


def _file_id(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class SQLiteStore(SQLiteGateway):
    """Durable store of jobs, requests, shards and results in one SQLite file (``":memory:"`` works too), and
    of the batch gateway's keys, files and batches (``SQLiteGateway``).

    The store's clock (lease expiry) is this machine's: a SQLite file is only ever shared by processes of one
    machine.

    ``read_only=True`` opens the file as it is, for commands that only read: it works on a read-only mount and
    on another user's readable file, converts nothing and creates nothing (a write raises ``StoreError``).
    Either way, a SQLite file of another application is refused before anything touches it: stores carry
    ``PRAGMA application_id`` :data:`APPLICATION_ID`, older ones (0) are recognised by their tables.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 60.0, read_only: bool = False) -> None:
        self.path = str(path)
        self.url = self.path
        self.read_only = read_only
        self._busy_timeout = busy_timeout
        self._db: aiosqlite.Connection | None = None
        self._lock = anyio.Lock()
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file opened, see _check_file
        self.migrated_from: int | None = None  # the version an open() upgraded (0: created), for `db upgrade`

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}{', read_only=True' if self.read_only else ''})"

    # --- connection ----------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._db is not None:
            return
        memory = self.path == ":memory:"
        if not memory:
            await self._refuse_foreign()
        if self.read_only and not memory:
            db = await self._connect_read_only()
        else:
            if not memory:
                try:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # owner-only from the first byte
                except OSError as exc:
                    raise StoreError(self._os_problem(exc)) from exc
                os.close(fd)
            db = await self._connect(self.path)
        self._db = db
        try:
            # before anything writes: another application's file, or a newer store, is left untouched
            stamped = await self._check_identity(db)
            version = await self._check_version(db)
            if not memory:
                self._file_id = _file_id(self.path)
            if self.read_only:
                await db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # as below
                if version == 0:
                    raise StoreError(f"job store {self.path} is empty: no job was ever submitted to it")
                if version < SCHEMA_VERSION:
                    raise StoreError(f"job store {self.path} was written by an older asyncbatch (schema version "
                                     f"{version}); a command that writes (run) upgrades it, then it can be read")
                return
            # A new store gets 16 KiB pages (an existing one keeps its own: this is then a no-op): result rows
            # of about 1 KB fill 4 KiB pages four at a time, and every page is a WAL frame written at commit.
            # Measured on 50,000 results: inserting, settling and committing take half the time.
            await db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            # Throughput, not durability (still WAL + NORMAL): an 8 MiB page cache keeps an ingest chunk's hot
            # pages (2 MiB spilled them to the WAL mid-transaction and read them back; 16 MiB was no faster). Set
            # after the page size: set before it, the same setting held 16 MB more at the peak of a submit.
            await db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            # A checkpoint every 64 MiB of WAL instead of every 4 MiB (each rewrites pages and syncs); bounded, so
            # memory stays flat whatever the job size.
            async with db.execute("PRAGMA page_size") as cur:
                page_size = (await cur.fetchone() or (PAGE_SIZE,))[0]
            await db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_BYTES // page_size}")
            await self._migrate(db, version, stamped)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(self._problem(exc)) from exc
        except BaseException:
            await self.close()
            raise

    async def _connect(self, database: str, *, uri: bool = False) -> aiosqlite.Connection:
        try:
            db = await aiosqlite.connect(database, uri=uri, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(self._problem(exc)) from exc
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        except BaseException:
            await db.close()
            raise
        return db

    async def _connect_read_only(self) -> aiosqlite.Connection:
        """A read-only connection (``mode=ro``: no file, table or WAL conversion is made).

        Reading a WAL store needs its ``-shm`` index, which SQLite makes next to the file. Where it cannot (a
        read-only mount, another user's directory) and no write-ahead log holds changes, the file can only be
        changed by someone who could also make that index: it is read as immutable.
        """
        if not os.path.exists(self.path):
            raise StoreError(f"no job store at {self.path}")
        uri = "file:" + urllib.request.pathname2url(os.path.abspath(self.path)) + "?mode=ro"
        db = await self._connect(uri, uri=True)
        try:
            await (await db.execute("PRAGMA schema_version")).close()  # the first read opens the WAL index
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await db.close()
            if not isinstance(exc, sqlite3.Error):
                raise
            wal = Path(self.path + "-wal")
            if not (
                isinstance(exc, sqlite3.OperationalError)
                and exc.sqlite_errorname.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY"))
                and not (wal.exists() and wal.stat().st_size)
            ):
                raise StoreError(self._problem(exc)) from exc
            return await self._connect(uri + "&immutable=1", uri=True)
        return db

    async def _refuse_foreign(self) -> None:
        """Look at an existing file as immutable (SQLite then creates nothing beside it, not even the index of a
        WAL file) and refuse it if another application made it. A file that cannot be read so is left to the
        real connection to report; its identity is checked again there."""
        if not os.path.exists(self.path) or not os.path.getsize(self.path):
            return
        uri = "file:" + urllib.request.pathname2url(os.path.abspath(self.path)) + "?mode=ro&immutable=1"
        try:
            peek = await aiosqlite.connect(uri, uri=True)
        except sqlite3.Error:
            return
        try:
            await self._check_identity(peek)
        except sqlite3.Error:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await peek.close()

    async def _check_identity(self, db: aiosqlite.Connection) -> bool:
        """Refuse a SQLite file of another application; True when the store must be stamped as ours (an empty
        file, or a store from before ``application_id``)."""
        async with db.execute("PRAGMA application_id") as cur:
            app_id = int((await cur.fetchone() or (0,))[0])
        if app_id == APPLICATION_ID:
            return False
        if app_id == 0:
            async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
                tables = {str(name) for (name,) in await cur.fetchall()}
            if not tables or tables >= STORE_TABLES:
                return True
            what = f"its tables are {', '.join(sorted(tables)[:6])}{', ...' if len(tables) > 6 else ''}"
        else:
            what = f"its application_id is {app_id:#010x}"
        raise StoreError(f"{self.path} is a SQLite file of another application, not an asyncbatch job store "
                         f"({what}); it was left untouched")

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

    async def _migrate(self, db: aiosqlite.Connection, version: int, stamp: bool) -> None:
        """Make a new store from the newest schema, or bring an older one up to it, one version per
        transaction (a crash leaves it at some version, never between two), marking it as an asyncbatch store
        (``application_id``) on the way, or alone when only the mark is missing."""
        steps: list[tuple[int, str]] = []
        if version < SCHEMA_VERSION:
            async with db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'") as cur:
                fresh = not (await cur.fetchone() or (0,))[0]
            steps = [(SCHEMA_VERSION, schema("sqlite"))] if fresh else migrations("sqlite", version)
            self.migrated_from = 0 if fresh else version
        elif stamp:
            steps = [(SCHEMA_VERSION, "")]
        for target, script in steps:
            await db.execute("BEGIN IMMEDIATE")
            try:
                if await self._check_version(db) < target:  # another process may have upgraded meanwhile
                    for statement in statements(script):
                        await db.execute(statement)
                    await db.execute(f"PRAGMA user_version = {target}")
                await db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                await db.execute("COMMIT")
            except BaseException:
                with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise

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
                self._check_file()
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

    def _check_file(self) -> None:
        """The file at ``path`` must still be the one opened: a store deleted or replaced under a running
        process would take every commit that follows into a file nobody can open again (paid results lost) while
        reporting success. One ``stat`` per transaction tells."""
        if self._file_id is None:
            return
        try:
            now = _file_id(self.path)
        except FileNotFoundError:
            now = None
        if now != self._file_id:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreError(f"job store {self.path} was {what} while this process was using it; stopping "
                             "before recording anything more where nobody could read it (restore the file and "
                             "run again)")

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
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

    async def ping(self) -> None:
        await self._read("SELECT 1")

    async def wait_for_change(self, within: float) -> None:
        """Look at ``PRAGMA data_version`` (it moves when another connection commits) every quarter second."""
        before = await self._data_version()
        with anyio.move_on_after(within):
            while True:
                await anyio.sleep(CHANGE_POLL)
                if await self._data_version() != before:
                    return

    async def _data_version(self) -> int:
        return int((await self._read("PRAGMA data_version"))[0][0])

    # --- jobs ----------------------------------------------------------------------------------------------

    async def create_job(self, job: Job, chunks: AsyncIterator[Sequence[NewRequest]]) -> int:
        """Insert the job and all its requests in one transaction: all or nothing (invariant 1). ``job.routes``
        and ``job.content_hash`` are written as they are after the last chunk (the caller fills them in while
        the requests stream through)."""
        total = 0
        async with self._tx() as db:
            await self._check_new(db, job)
            await db.execute(_Q["insert_job"], _job_params(job))
            async for chunk in chunks:
                await self._insert_requests(db, job.id, chunk)
                total += len(chunk)
            await db.execute(_Q["complete_job"], (_json(job.routes).decode(), job.content_hash, job.id))
        return total

    @staticmethod
    async def _check_new(db: aiosqlite.Connection, job: Job) -> None:
        async with db.execute(_Q["job_exists"], (job.id,)) as cur:
            if await cur.fetchone():
                raise JobConflictError(f"a job with id {job.id!r} exists already")
        if job.idempotency_key is not None:
            async with db.execute(_Q["job_by_idempotency_key"], (job.owner, job.idempotency_key)) as cur:
                row = await cur.fetchone()
            if row:
                raise JobConflictError(f"idempotency key {job.idempotency_key!r} names job {row[0]} already")

    @staticmethod
    async def _insert_requests(db: aiosqlite.Connection, job_id: str, chunk: Sequence[NewRequest]) -> None:
        """Bulk insert; when a custom_id is taken, redo the chunk row by row to name the duplicate line."""
        await db.execute("SAVEPOINT chunk")
        before = db.total_changes
        rows = [(job_id, r.custom_id, r.route, r.url, r.model, r.body, r.size) for r in chunk]
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

    async def find_job(
        self, *, idempotency_key: str | None = None, content_hash: str | None = None, batch_id: str | None = None,
        owner: str | None = None,
    ) -> Job | None:
        if idempotency_key is not None:
            rows = await self._read(_Q["job_by_idempotency_key"], (owner, idempotency_key))
        elif content_hash is not None:
            rows = await self._read(_Q["job_by_content_hash"], (owner, content_hash))
        elif batch_id is not None:
            rows = await self._read(_Q["job_by_batch_id"], (owner, batch_id))
        else:
            return None
        return await self.get_job(str(rows[0][0])) if rows else None

    async def get_job(self, job_id: str, *, with_counts: bool = True) -> Job:
        """The job; ``with_counts=False`` skips counting its requests (pollers read the job often)."""
        rows = await self._read(_Q["get_job"], (job_id,))
        if not rows:
            raise JobNotFoundError(f"no job {job_id!r} in {self.path}")
        job = _job(rows[0])
        if with_counts:
            job.counts = await self.counts(job_id)
        return job

    async def list_jobs(self, *, owner: str | None = None, unfinished: bool = False) -> list[Job]:
        jobs = [_job(row) for row in await self._read(_Q["list_jobs"], (owner, int(unfinished)))]
        for job in jobs:
            job.counts = await self.counts(job.id)
        return jobs

    async def unfinished_job_ids(self) -> list[str]:
        return [str(row[0]) for row in await self._read(_Q["unfinished_job_ids"])]

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

    async def set_route(self, job_id: str, route: str, spec: ProviderSpec) -> None:
        async with self._tx() as db:
            async with db.execute(_Q["get_job"], (job_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise JobNotFoundError(f"no job {job_id!r} in {self.path}")
            routes = _job(row).routes
            routes[route] = spec
            await db.execute(_Q["set_routes"], (_json(routes).decode(), time.time(), job_id))

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
            cancelled = Settlement(state=RequestState.CANCELLED, error_code="cancelled",
                                   error_message="cancelled by the user")
            for shard in shards:
                if shard.phase in (ShardPhase.PLANNED, ShardPhase.UPLOADED):
                    cur = await db.execute(_Q["shard_abandoned"], ("[]", shard.id, None, None))
                    if cur.rowcount:
                        await self._settle_rest(db, shard.id, cancelled)
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

    @asynccontextmanager
    async def planning(self, job_id: str) -> AsyncIterator[_Planning]:
        """One write transaction in which the engine fills one shard (``BEGIN IMMEDIATE`` keeps other
        planners of the same job out until it commits)."""
        async with self._tx() as db:
            yield _Planning(db, job_id)

    # --- shards and leases ---------------------------------------------------------------------------------

    async def lease_holders(self, job_id: str) -> set[str]:
        return {str(row[0]) for row in await self._read(_Q["lease_holders"], (job_id, time.time()))}

    async def claim_shards(
        self, job_id: str, owner: str, lease_seconds: float, *, take_over: Collection[str] = ()
    ) -> list[Lease]:
        """Lease every live shard of the job that nobody holds, whose lease lapsed, or whose holder is in
        ``take_over``; one statement however many shards the job has."""
        now = time.time()
        async with self._tx() as db:
            cur = await db.execute(_Q["claim_shards"], (owner, now + lease_seconds, job_id, now,
                                                         _json(sorted(take_over)).decode()))
            rows = await cur.fetchall()
        return [Lease(shard_id=int(shard_id), owner=owner, token=int(token)) for shard_id, token in rows]

    async def renew_lease(self, lease: Lease, lease_seconds: float) -> None:
        async with self._tx() as db:
            cur = await db.execute(_Q["renew_lease"], (time.time() + lease_seconds, *_lease(lease)))
            if not cur.rowcount:
                raise LeaseLostError(f"lease on shard {lease.shard_id} lost")

    async def renew_leases(self, owner: str, lease_seconds: float) -> None:
        """Extend every lease ``owner`` holds: one statement, however many shards it drives."""
        async with self._tx() as db:
            await db.execute(_Q["renew_leases"], (time.time() + lease_seconds, owner))

    async def release(self, lease: Lease) -> None:
        async with self._tx() as db:
            await db.execute(_Q["release_lease"], _lease(lease))

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

    async def _shard_update(self, query: str, params: Sequence[Any], lease: Lease) -> None:
        async with self._tx() as db:
            cur = await db.execute(_Q[query], (*params, *_lease(lease)))
            if not cur.rowcount:
                raise LeaseLostError(f"shard {lease.shard_id}: {query} did not apply (lease lost or phase moved on)")

    async def shard_uploaded(self, lease: Lease, file_id: str | None) -> None:
        await self._shard_update("shard_uploaded", (file_id,), lease)

    async def shard_creating(self, lease: Lease) -> float:
        now = time.time()
        await self._shard_update("shard_creating", (now,), lease)
        return now

    async def shard_reupload(self, lease: Lease, reason: str) -> None:
        await self._shard_update("shard_reupload", (reason,), lease)

    async def shard_submitted(self, lease: Lease, batch: RemoteBatch) -> None:
        try:
            await self._shard_update(
                "shard_submitted",
                (batch.id, batch.status.value, _json(batch.counts), _json(batch.errors), batch.created_at or None),
                lease,
            )
        except StoreError as exc:  # the unique index on batch_id
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise BatchClaimedError(f"batch {batch.id} is already recorded for another shard") from exc
            raise

    async def shard_rebind(self, lease: Lease, batch: RemoteBatch) -> None:
        await self._shard_update(
            "shard_rebind",
            (batch.id, batch.status.value, _json(batch.counts), _json(batch.errors), batch.created_at or None),
            lease,
        )

    async def recorded_batch_ids(self, *, since: float) -> set[str]:
        """Provider batch ids of shards planned since ``since``: reconciliation must not adopt them."""
        return {str(row[0]) for row in await self._read(_Q["recorded_batch_ids"], (since,))}

    async def shard_polled(self, lease: Lease, batch: RemoteBatch) -> None:
        """Record what a poll saw; a terminal status moves the shard to ``ended`` in the same transaction."""
        async with self._tx() as db:
            cur = await db.execute(
                _Q["shard_polled"],
                (batch.status.value, _json(batch.counts), _json(batch.errors), batch.output_file_id,
                 batch.error_file_id, *_lease(lease)),
            )
            if not cur.rowcount:
                raise LeaseLostError(f"shard {lease.shard_id}: lease lost while polling")
            if batch.status.is_terminal:
                await db.execute(_Q["shard_ended"], (time.time(), *_lease(lease)))

    async def shard_note(self, lease: Lease, error: str | None) -> None:
        await self._shard_update("shard_note", (error,), lease)

    async def shard_abandoned(self, lease: Lease, errors: list[BatchError], settle: Settlement) -> None:
        """A shard that will not (or no longer) run at the provider: its members are settled in one go."""
        async with self._tx() as db:
            cur = await db.execute(_Q["shard_abandoned"], (_json(errors).decode(), *_lease(lease)))
            if not cur.rowcount:
                raise LeaseLostError(f"shard {lease.shard_id}: lease lost before it was abandoned")
            await self._settle_rest(db, lease.shard_id, settle)

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
        lease: Lease,
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

        Every chunk checks the lease first: a worker that lost the shard writes nothing.
        """
        shard_id = lease.shard_id
        rows = sorted(results, key=_RID)  # a shard's results have one row per request
        async with self._tx() as db:
            cur = await db.execute(_Q["shard_note"], (None, *_lease(lease)))
            if not cur.rowcount:
                raise LeaseLostError(f"shard {shard_id}: lease lost while ingesting")
            if rows:
                params = [(*astuple(r), shard_id) for r in rows]  # one binding serves both statements
                await db.executemany(_Q["upsert_result"], params)
                await db.executemany(_Q["settle_request"], [
                    p for r, p in zip(rows, params, strict=True) if r.state is not RequestState.SUCCEEDED
                ])
                await self.book_spend(db, shard_id, [r.rid for r in rows])  # a gateway batch's spend
            orphan_rows = [(shard_id, w, line) for w, line in orphans]
            if orphan_rows:
                await db.executemany(_Q["upsert_orphan"], orphan_rows)
            if finish is not None:
                if succeeded:
                    await db.execute(_Q["settle_succeeded"], (_json(sorted(succeeded)).decode(), shard_id))
                await self._settle_rest(db, shard_id, finish)
                cur = await db.execute(_Q["shard_ingested"], _lease(lease))
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
        return [_stored_result(row) for row in rows]

    async def attempt_results(
        self, job_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[StoredResult]:
        rows = await self._read(_Q["all_attempt_results"], (job_id, after[0], after[1], limit))
        return [_stored_result(row) for row in rows]

    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]:
        return [(int(s), str(w), bytes(line)) for s, w, line in await self._read(_Q["orphans"], (job_id,))]

    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None:
        async with self._tx() as db:
            await db.executemany(_Q["acknowledge"], [(job_id, cid) for cid in custom_ids])

    async def audit(self, job_id: str) -> JobAudit:
        await self.get_job(job_id, with_counts=False)
        wire_ids: dict[str, list[str]] = defaultdict(list)
        for custom_id, wire_id in await self._read(_Q["audit_wire_ids"], (job_id,)):
            wire_ids[str(custom_id)].append(str(wire_id))
        successes: dict[str, list[int]] = defaultdict(list)
        for custom_id, attempt in await self._read(_Q["audit_successes"], (job_id,)):
            successes[str(custom_id)].append(int(attempt))
        return JobAudit(
            requests={str(c): (_STATES[s], int(a)) for c, s, a in await self._read(_Q["audit_requests"], (job_id,))},
            wire_ids=dict(wire_ids), successes=dict(successes),
            tokens=[str(row[0]) for row in await self._read(_Q["audit_tokens"], (job_id,))],
            integrity=await self.integrity_check(),
        )


    async def stats(self) -> StoreStats:
        pending, in_flight, failed, cancelled, total = (await self._read(_Q["stats_requests"]))[0]
        return StoreStats(
            jobs={str(k): int(n) for k, n in await self._read(_Q["stats_jobs"])},
            shards={str(k): int(n) for k, n in await self._read(_Q["stats_shards"])},
            batches={str(k): int(n) for k, n in await self._read(_Q["stats_batches"])},
            requests={"pending": pending, "in_flight": in_flight, "failed": failed, "cancelled": cancelled,
                      "succeeded": total - pending - in_flight - failed - cancelled},
        )

    # --- moving a store (``asyncbatch db copy``) -------------------------------------------------------------

    async def dump(self, chunk: int = 10_000) -> AsyncIterator[tuple[str, list[tuple[Any, ...]]]]:
        """Every row of every table of ``TABLES`` (parents first), a keyset page per read."""
        for table in TABLES:
            keys = [table.names.index(k) for k in table.key]
            after: dict[str, Any] | None = None
            while rows := await self._read(dump_query(table, first=after is None, marker=":{}"),
                                           {**(after or {}), "limit": chunk}):
                page = portable(table, rows)
                yield table.name, page
                after = {k: page[-1][i] for k, i in zip(table.key, keys, strict=True)}

    async def load(self, dump: AsyncIterator[tuple[str, list[tuple[Any, ...]]]]) -> dict[str, int]:
        """Fill an empty store with a dump, in one transaction; returns the rows of each table."""
        counts: dict[str, int] = {}
        tables = {table.name: table for table in TABLES}
        async with self._tx() as db:
            async with db.execute(_Q["job_count"]) as cur:
                if (await cur.fetchone() or (0,))[0]:
                    raise StoreError(f"job store {self.path} holds jobs already: a copy goes into a new store")
            async for name, rows in dump:
                await db.executemany(insert_query(tables[name], "?"), rows)
                counts[name] = counts.get(name, 0) + len(rows)
        return counts


class _Planning:
    """A planning session inside one open write transaction (see ``Store.planning``)."""

    def __init__(self, db: aiosqlite.Connection, job_id: str) -> None:
        self._db = db
        self._job_id = job_id

    async def pending(self, limit: int) -> list[PendingRequest]:
        rows = await self._db.execute_fetchall(_Q["pending_for_planning"], (self._job_id, limit))
        return [PendingRequest(rid=r[0], custom_id=r[1], route=r[2], url=r[3], model=r[4], size=r[5], attempts=r[6])
                for r in rows]

    async def add_shard(self, shard: PlannedShard) -> int:
        cur = await self._db.execute(_Q["insert_shard"], (self._job_id, shard.token, shard.route, shard.endpoint,
                                                          shard.model, time.time()))
        assert cur.lastrowid is not None
        shard.id = cur.lastrowid
        return shard.id

    async def add_members(self, shard: PlannedShard, members: Sequence[tuple[int, str, int]]) -> None:
        db = self._db
        await db.executemany(_Q["insert_member"], ((shard.id, wire, rid, att) for rid, wire, att in members))
        cur = await db.execute(_Q["assign_requests"], (shard.id, _json([rid for rid, _, _ in members]).decode()))
        if cur.rowcount != len(members):  # the session's own reads: another planner cannot have taken them
            raise StoreError(f"shard {shard.id}: {len(members) - cur.rowcount} of its requests were not pending")
        await db.execute(_Q["size_shard"], (shard.attempt, shard.request_count, shard.bytes, shard.id))


def _lease(lease: Lease) -> tuple[int, str, int]:
    return lease.shard_id, lease.owner, lease.token


def _job_params(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "provider": job.provider, "base_url": job.base_url,
        "provider_options": _json(job.provider_options).decode(), "endpoint": job.endpoint,
        "completion_window": job.completion_window, "max_attempts": job.max_attempts,
        "metadata": _json(job.metadata).decode(), "status": job.status.value,
        "created_at": job.created_at, "updated_at": job.updated_at, "routes": _json(job.routes).decode(),
        "owner": job.owner, "idempotency_key": job.idempotency_key, "content_hash": job.content_hash,
    }


def _job(row: sqlite3.Row | tuple[Any, ...]) -> Job:
    (job_id, provider, base_url, options, endpoint, window, max_attempts, metadata, status, cancel, created,
     updated, routes, owner, idempotency_key, content_hash) = row
    return Job(
        id=job_id, provider=provider, base_url=base_url, provider_options=msgspec.json.decode(options),
        endpoint=endpoint, completion_window=window,
        max_attempts=max_attempts, metadata=msgspec.json.decode(metadata), status=JobStatus(status),
        cancel_requested=bool(cancel), created_at=created, updated_at=updated, routes=_routes.decode(routes),
        owner=owner, idempotency_key=idempotency_key, content_hash=content_hash,
    )


def _shard(row: sqlite3.Row | tuple[Any, ...]) -> Shard:
    (shard_id, job_id, attempt, token, phase, route, endpoint, model, count, size, file_id, batch_id, batch_status,
     output_file_id, error_file_id, counts, errors, created, creating, ended, provider_created, results_expire,
     last_error) = row
    return Shard(
        id=shard_id, job_id=job_id, attempt=attempt, token=token, phase=ShardPhase(phase), route=route,
        endpoint=endpoint, model=model, request_count=count, bytes=size, file_id=file_id, batch_id=batch_id,
        batch_status=BatchStatus(batch_status) if batch_status else None, output_file_id=output_file_id,
        error_file_id=error_file_id, provider_counts=msgspec.json.decode(counts),
        errors=msgspec.json.decode(errors), created_at=created, creating_at=creating, ended_at=ended,
        provider_created_at=provider_created, results_expire_at=results_expire, last_error=last_error,
    )


def _stored_result(row: sqlite3.Row | tuple[Any, ...]) -> StoredResult:
    (rid, custom_id, state, attempt, req_code, req_message, outcome, status_code, body, code, message,
     input_tokens, output_tokens, cached_tokens, model, request_id, line_id, batch_id, route) = row
    return StoredResult(
        rid=rid, custom_id=custom_id, state=_STATES[state], attempt=attempt,
        request_error_code=req_code, request_error_message=req_message, outcome=outcome,
        status_code=status_code, body=bytes(body) if body is not None else None, error_code=code,
        error_message=message, input_tokens=input_tokens, output_tokens=output_tokens,
        cached_tokens=cached_tokens, model=model, request_id=request_id, line_id=line_id, batch_id=batch_id,
        route=route,
    )
