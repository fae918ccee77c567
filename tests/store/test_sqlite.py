"""What only the SQLite backend has: its schema versions (``PRAGMA user_version``) and the upgrade from 1."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from asyncbatch import JobStatus, SchemaVersionError
from asyncbatch.engine.pool import ProviderPool
from asyncbatch.model import ShardLimits, ShardPhase
from asyncbatch.store import SQLiteStore
from asyncbatch.store.sql import SCHEMA_VERSION
from tests.helpers import plan_all

V1_SCHEMA = Path(__file__).with_name("schema_v1.sql")


def v1_store(path: Path) -> None:
    """A store as asyncbatch 0.1 (schema 1) left it: a job with a shard in flight and a pending request."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(V1_SCHEMA.read_text())
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO jobs VALUES ('job_old', 'openai', 'http://h/v1', '{}', '*', '24h', 3, '{}', "
                     "'running', 0, 1.0, 1.0)")
        conn.executemany("INSERT INTO requests (job_id, custom_id, url, model, body, size, state, attempts, shard_id)"
                         " VALUES ('job_old', ?, '/v1/chat/completions', 'm', '{}', 10, ?, ?, ?)",
                         [("a", "in_flight", 1, 1), ("b", "pending", 0, None)])
        conn.execute("INSERT INTO shards (id, job_id, attempt, token, phase, endpoint, model, request_count, bytes,"
                     " batch_id, batch_status, created_at, lease_owner, lease_expires) VALUES (1, 'job_old', 1, 'tok',"
                     " 'submitted', '/v1/chat/completions', 'm', 1, 10, 'batch_1', 'in_progress', 1.0, 'h:1:x', 5.0)")
        conn.execute("INSERT INTO shard_members VALUES (1, 'a', 1, 1)")
        conn.commit()


async def test_a_version_1_store_is_upgraded_in_place_and_carries_on(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    v1_store(db)
    store = SQLiteStore(db)
    await store.open()
    try:
        job = await store.get_job("job_old")
        assert job.routes == {} and job.status is JobStatus.RUNNING and job.counts.in_flight == 1
        assert job.spec("").base_url == "http://h/v1"  # rows of schema 1 run on the job's default provider
        (shard,) = await store.job_shards("job_old")
        assert shard.route == "" and shard.phase is ShardPhase.SUBMITTED and shard.batch_id == "batch_1"
        (lease,) = await store.claim_shards("job_old", "me:1:y", 60, take_over=["h:1:x"])
        assert lease.token == 1
        (planned,) = await plan_all(store, "job_old", ShardLimits(max_requests=10, max_bytes=10**6),
                                    lambda cid, rid, token: cid)
        assert planned.route == "" and planned.request_count == 1
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert ProviderPool().get(job.spec("")).base_url == "http://h/v1"


async def test_a_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match="newer"):
        await SQLiteStore(path).open()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
