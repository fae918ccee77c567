"""``asyncbatch db upgrade`` and ``asyncbatch db copy``: a store's schema brought up to date, and a store moved,
half done, from SQLite into PostgreSQL, where its job ends as it would have without the move."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anyio
import psycopg

from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.store.sql import SCHEMA_VERSION
from tests.engine.test_crash import RUN, cli, cli_env, submit
from tests.helpers import chat_line, verify_exactly_once
from tests.pg import Server
from tests.reliability.support import until
from tests.store.test_sqlite import v1_store


async def test_db_upgrade_brings_a_store_up_to_date_and_refuses_a_newer_one(tmp_path: Path,
                                                                          pg_server: Server) -> None:
    old = tmp_path / "old.db"
    v1_store(old)
    code, out, err = await cli("db", "upgrade", "--db", str(old))
    assert code == 0 and f"{old}: schema version 1 -> {SCHEMA_VERSION}" in out, err
    code, out, _ = await cli("db", "upgrade", "--db", f"sqlite:///{old}")
    assert code == 0 and "nothing to do" in out
    empty = pg_server.database(empty=True)
    code, out, err = await cli("db", "upgrade", "--db", empty)
    assert code == 0 and f"created at schema version {SCHEMA_VERSION}" in out, err
    with psycopg.connect(empty, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    code, out, err = await cli("db", "upgrade", "--db", empty)
    assert code == 1 and "newer than this asyncbatch" in err and "Traceback" not in err
    with sqlite3.connect(old) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    code, _, err = await cli("db", "upgrade", "--db", str(old))
    assert code == 1 and "newer than this asyncbatch" in err
    code, _, err = await cli("db", "upgrade", "--db", str(tmp_path / "missing.db"))
    assert code == 1 and "no job store at" in err


def outcomes(path: Path) -> dict[str, tuple[int, str]]:
    """custom_id -> (status code, the answer's text) of a ``results`` file: what a run came to."""
    found = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        response = record["response"]
        found[record["custom_id"]] = (response["status_code"], response["body"]["choices"][0]["message"]["content"])
    return found


async def run_to_the_end(db: str, job_id: str, out: Path) -> dict[str, tuple[int, str]]:
    code, stdout, err = await cli("run", "--db", db, *RUN)
    assert code == 0 and f"{job_id} done" in stdout, err[-800:]
    code, _, err = await cli("results", job_id, "--db", db, "-o", str(out))
    assert code == 0, err
    return outcomes(out)


LINES = [chat_line(f"req-{i:04d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 6 == 0 else ""))
         for i in range(720)]


async def test_a_half_done_job_copied_into_postgres_ends_as_if_it_never_moved(tmp_path: Path, pg_url: str) -> None:
    config = EmulatorConfig(complete_after=1.0, seed=5)
    async with run_emulator(config, data_dir=tmp_path / "emu-still") as emu:  # the run that never moves
        still, job_id = await submit(str(tmp_path / "still.db"), tmp_path, emu, LINES)
        expected = await run_to_the_end(still, job_id, tmp_path / "still.jsonl")
    moved = tmp_path / "moved"
    moved.mkdir()
    async with run_emulator(config, data_dir=tmp_path / "emu-moved") as emu:
        db, job_id = await submit(str(moved / "jobs.db"), moved, emu, LINES, "--job-id", job_id)
        proc = await anyio.open_process([sys.executable, "-m", "asyncbatch", "run", "--db", db, *RUN],
                                        env=cli_env())
        try:
            # half done: batches ingested, others at the provider
            await until(lambda: bool(emu.ledger.requests) and len(emu.ledger.batches_created()) >= 4, within=60)
            code, _, err = await cli("db", "copy", "--from", db, "--to", pg_url)
            assert code == 1 and "stop the workers" in err, err  # a live worker holds leases on it
        finally:
            proc.kill()
            await proc.wait()
        code, out, err = await cli("db", "copy", "--from", f"sqlite:///{db}", "--to", pg_url)
        assert code == 0 and "copied 1 jobs, 720 requests" in out, err
        in_flight = int(out.split("shards (")[1].split()[0])
        assert in_flight >= 1, out  # batches were at the provider when the store moved
        got = await run_to_the_end(pg_url, job_id, moved / "moved.jsonl")
        verify_exactly_once(pg_url, emu.ledger, job_id, expect_all_succeeded=True)
    assert got == expected
    code, _, err = await cli("db", "copy", "--from", db, "--to", pg_url)
    assert code == 1 and "holds jobs already" in err

