"""What only the PostgreSQL backend has: its URL and secrets, its schema version, and a database that goes away
(connections killed by ``pg_terminate_backend``, the server restarted) in the middle of the work."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest

from asyncbatch import SchemaVersionError, StoreError
from asyncbatch.model import BatchStatus, NewRequest, RequestState, ShardLimits
from asyncbatch.store import open_store
from asyncbatch.store.postgres import PostgresStore
from asyncbatch.store.sql import SCHEMA_VERSION
from tests.helpers import plan_all
from tests.pg import Server, with_url_db
from tests.store.test_contract import OWNER_A, RETRY, add_job, make_job, remote, requests, row, wire

SECRET = "pw-s3cret-do-not-print"


def with_password(url: str) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)


async def test_the_url_and_every_error_leave_the_password_out(pg_server: Server, pg_url: str) -> None:
    store = PostgresStore(with_password(pg_url) + f"&password={SECRET}")
    assert SECRET not in store.url + repr(store) and store.url.startswith("postgresql://postgres@/")
    missing = PostgresStore(with_password(with_url_db(pg_server.dsn, "no_such_db")), retry_for=30)
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        await missing.open()
    assert time.monotonic() - started < 5  # a database that does not exist is not waited for
    assert "no_such_db" in str(info.value) and SECRET not in str(info.value)
    away = PostgresStore(f"postgresql://postgres:{SECRET}@/db?host=/nonexistent-dir", retry_for=0.5)
    with pytest.raises(StoreError) as info:
        await away.open()
    assert "unreachable for 0.5s" in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(StoreError, match="not a PostgreSQL URL") as info:
        PostgresStore(f"postgresql://postgres:{SECRET}@/db?no_such_option=1")
    assert SECRET not in str(info.value)


async def test_an_empty_database_gets_the_schema_once_however_many_open_it(pg_server: Server) -> None:
    url = pg_server.database(empty=True)
    stores = [PostgresStore(url) for _ in range(4)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    try:
        assert sorted(s.migrated_from for s in stores if s.migrated_from is not None) == [0]
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        await add_job(stores[0], 3)
        assert (await stores[1].counts("job_1")).pending == 3
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_or_a_foreign_database_is_refused_and_left_untouched(pg_server: Server,
                                                                                 pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaVersionError, match="newer"):
        await PostgresStore(pg_url).open()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT max(version), count(*) FROM schema_version").fetchone() == (SCHEMA_VERSION + 1, 2)
    foreign = pg_server.database(empty=True)
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE jobs (id int)")
    with pytest.raises(StoreError, match="a database of its own"):
        await PostgresStore(foreign).open()


class Storm:
    """Kills every other connection to the database, again and again, while the test works."""

    def __init__(self, url: str, every: float) -> None:
        self.url, self.every, self.killed = url, every, 0

    async def run(self) -> None:
        rng = random.Random(7)
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            while True:
                await anyio.sleep(self.every * rng.uniform(0.5, 1.5))
                await self._kill(conn)

    async def kill_once(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await self._kill(conn)

    async def _kill(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        self.killed += int((await cur.fetchone() or (0,))[0])


async def drive_to_the_end(store: Any, n: int, chunk: int) -> None:
    """Plan, claim, submit and ingest job_1 (of ``n`` requests) in chunks, as an engine would."""
    shards = await plan_all(store, "job_1", ShardLimits(max_requests=max(1, n // 8), max_bytes=10**9), wire)
    assert len(shards) >= 8
    leases = await store.claim_shards("job_1", OWNER_A, 60)
    for number, lease in enumerate(leases):
        await store.shard_uploaded(lease, f"file-{number}")
        await store.shard_creating(lease)
        await store.shard_submitted(lease, remote(f"batch-{number}"))
        await store.shard_polled(lease, remote(f"batch-{number}", status=BatchStatus.COMPLETED))
        rids = sorted(rid for rid, _ in (await store.member_requests(lease.shard_id)).values())
        for start in range(0, len(rids), chunk):
            await store.ingest(lease, [row(rid) for rid in rids[start:start + chunk]])
        await store.ingest(lease, [], finish=RETRY, succeeded=rids)


async def assert_done_once(store: Any, n: int) -> None:
    audit = await store.audit("job_1")
    assert audit.integrity == "ok"
    assert len(audit.requests) == n and {s for s, _ in audit.requests.values()} == {RequestState.SUCCEEDED}
    assert all(attempts == [1] for attempts in audit.successes.values()) and len(audit.successes) == n
    assert all(len(w) == 1 for w in audit.wire_ids.values())


async def test_connections_killed_mid_work_are_retried_and_nothing_is_lost_or_doubled(pg_url: str) -> None:
    store = open_store(pg_url, retry_for=30)
    await store.open()
    storm = Storm(pg_url, every=0.05)
    try:
        await add_job(store, 3000)
        async with anyio.create_task_group() as tg:
            tg.start_soon(storm.run)
            await drive_to_the_end(store, 3000, 40)
            tg.cancel_scope.cancel()
        await assert_done_once(store, 3000)
        assert (await store.counts("job_1")).completed == 3000
    finally:
        await store.close()
    assert storm.killed >= 10, f"only {storm.killed} connections were killed: the test proves little"


async def test_a_server_restart_mid_ingest_is_waited_out(pg_server: Server, pg_url: str) -> None:
    cluster = pg_server.cluster
    if cluster is None:
        pytest.skip("needs the throwaway cluster (restarts the server)")
    store = open_store(pg_url, retry_for=60)
    await store.open()
    restarted = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            async def restart_twice() -> None:
                for _ in range(2):
                    await anyio.sleep(0.4)
                    await anyio.to_thread.run_sync(cluster.restart)
                restarted.set()

            await add_job(store, 2000)
            tg.start_soon(restart_twice)
            await drive_to_the_end(store, 2000, 10)
            with anyio.fail_after(60):
                await restarted.wait()
        await assert_done_once(store, 2000)
    finally:
        await store.close()


async def test_a_database_gone_for_good_is_a_clear_error_after_a_bounded_wait(pg_server: Server) -> None:
    url = pg_server.database()
    store = open_store(url, retry_for=1.0)
    await store.open()
    try:
        await add_job(store, 2)
        pg_server.drop(url)  # connections killed, the database removed: no retry brings it back
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            await store.get_job("job_1")
        assert time.monotonic() - started < 10
        assert "job store" in str(info.value)
    finally:
        await store.close()


async def test_a_submit_cut_off_by_a_lost_connection_stores_nothing_and_says_to_submit_again(pg_url: str) -> None:
    store = open_store(pg_url, retry_for=5)
    await store.open()

    async def cut_off() -> AsyncIterator[list[NewRequest]]:
        yield requests(5)
        await Storm(pg_url, every=0).kill_once()
        yield requests(5, prefix="d")

    try:
        with pytest.raises(StoreError, match="submit it again"):
            await store.create_job(make_job(), cut_off())
        assert await store.list_jobs() == []
        await add_job(store, 3)  # and the store carries on
    finally:
        await store.close()
