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

