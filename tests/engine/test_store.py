"""The SQLite store on its own: planning, spooling, leases, schema versions."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from asyncbatch import JobStatus, SchemaVersionError
from asyncbatch.model import Job
from asyncbatch.providers.base import ShardLimits
from asyncbatch.store import LeaseLostError, NewRequest, SQLiteStore, new_owner
from tests.helpers import plan_all


def job(job_id: str = "job_1") -> Job:
    now = time.time()
    return Job(id=job_id, provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
               metadata={}, status=JobStatus.OPEN, created_at=now, updated_at=now)


async def chunks(n: int, *, models: Sequence[str] = ("m",)) -> AsyncIterator[list[NewRequest]]:
    yield [NewRequest(custom_id=f"c{i}", url="/v1/chat/completions", model=models[i % len(models)],
                      body=b'{"i":%d}' % i, size=100, line=i + 1) for i in range(n)]


def wire(custom_id: str, rid: int, token: str) -> str:
    return f"{token[:4]}-{custom_id}"


async def test_plan_groups_by_model_and_cuts_at_the_limits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_job(job(), chunks(25, models=("a", "b")))
        planned = await plan_all(store, job(), ShardLimits(max_requests=5, max_bytes=10_000), wire)
        assert [(p.model, p.request_count) for p in planned] == [("a", 5), ("a", 5), ("a", 3), ("b", 5), ("b", 5),
                                                                 ("b", 2)]
        assert await plan_all(store, job(), ShardLimits(max_requests=5, max_bytes=10_000), wire) == []
        counts = await store.counts("job_1")
        assert counts.in_flight == 25 and counts.pending == 0
        members = await store.member_requests(planned[0].id)
        assert all(w.startswith(planned[0].token[:4]) for w in members) and len(members) == 5
    finally:
        await store.close()


async def test_spool_rows_stream_in_chunks_without_holding_the_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_job(job(), chunks(10))
        (shard,) = await plan_all(store, job(), ShardLimits(max_requests=100, max_bytes=10**6), wire)
        sizes = []
        async for rows in store.spool_rows(shard.id, chunk=3):
            sizes.append(len(rows))
            assert await store.counts("job_1")  # the store answers while a chunk is being handled
        assert sizes == [3, 3, 3, 1]
        gen = store.spool_rows(shard.id, chunk=3)
        await gen.__anext__()
        await gen.aclose()  # a consumer that stops half-way leaves nothing locked
        await store.set_job_status("job_1", JobStatus.RUNNING)
    finally:
        await store.close()


async def test_leases_exclude_others_and_pass_on_when_the_holder_died(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_job(job(), chunks(4))
        (shard,) = await plan_all(store, job(), ShardLimits(max_requests=10, max_bytes=10**6), wire)
        code = "from asyncbatch.store import new_owner; print(new_owner())"
        dead = (await anyio.run_process([sys.executable, "-c", code])).stdout.decode().strip()
        alive_other = new_owner().replace(new_owner().split(":")[2], "ffffffff")
        assert await store.claim_shards("job_1", alive_other, 60) == [shard.id]
        assert await store.claim_shards("job_1", new_owner() + "x", 60) == []  # held by a live process
        with pytest.raises(LeaseLostError):
            await store.shard_uploaded(shard.id, "someone-else", "file-1")
        await store.release(shard.id, alive_other)
        assert await store.claim_shards("job_1", dead, 60) == [shard.id]  # that process has exited
        me = new_owner()
        assert await store.claim_shards("job_1", me, 60) == [shard.id]
    finally:
        await store.close()


async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaVersionError, match="newer"):
        await SQLiteStore(path).open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_version_1_store_is_migrated_with_its_results(tmp_path: Path) -> None:
    """A store written by asyncbatch with schema 1 (results keyed by (rid, attempt)) opens, is migrated in
    place, and every result and attempt reads back as before."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "schema_v1.sql").read_text())
        conn.execute("INSERT INTO jobs VALUES ('job_1', 'openai', NULL, '{}', '*', '24h', 3, '{}', 'done', 0, 1, 1)")
        conn.executemany(
            "INSERT INTO requests (rid, job_id, custom_id, url, model, body, size, state, attempts, shard_id) "
            "VALUES (?, 'job_1', ?, '/v1/chat/completions', 'm', X'7B7D', 2, ?, ?, ?)",
            [(1, "a", "succeeded", 2, 2), (2, "b", "failed", 1, 1)],
        )
        conn.executemany(
            "INSERT INTO shards (id, job_id, attempt, token, phase, endpoint, model, request_count, bytes, batch_id,"
            " created_at) VALUES (?, 'job_1', ?, ?, 'ingested', '/v1/chat/completions', 'm', 1, 2, ?, 1)",
            [(1, 1, "t1", "batch_1"), (2, 2, "t2", "batch_2")],
        )
        conn.executemany(
            "INSERT INTO results (rid, attempt, shard_id, outcome, status_code, body) VALUES (?, ?, ?, ?, ?, ?)",
            [(1, 1, 1, "errored", 500, b'{"error":{}}'), (1, 2, 2, "succeeded", 200, b'{"ok":1}'),
             (2, 1, 1, "errored", 400, b'{"error":{}}')],
        )
        conn.execute("PRAGMA user_version = 1")
    store = SQLiteStore(path)
    await store.open()
    try:
        final = await store.final_results("job_1")
        assert [(r.custom_id, r.attempt, r.status_code, r.body, r.batch_id) for r in final] == [
            ("a", 2, 200, b'{"ok":1}', "batch_2"), ("b", 1, 400, b'{"error":{}}', "batch_1")]
        every = await store.attempt_results("job_1", limit=2)
        every += await store.attempt_results("job_1", after=(every[-1].rid, every[-1].attempt), limit=2)
        assert [(r.custom_id, r.attempt, r.status_code) for r in every] == [("a", 1, 500), ("a", 2, 200),
                                                                            ("b", 1, 400)]
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("SELECT id FROM results ORDER BY id").fetchall() == [(1 << 16 | 1,), (1 << 16 | 2,),
                                                                                  (2 << 16 | 1,)]
