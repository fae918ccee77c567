"""Store faults: a newer schema, a read-only or locked database, a full disk under the store or the spool.

Each gives a clear one-line error (a ``StoreError`` from Python), leaves the database sound and the jobs in
it as they were, and once the fault is gone a plain restart finishes the job exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager, SchemaVersionError, StoreError
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.openai import OpenAIProvider
from asyncbatch.store import SQLiteStore
from asyncbatch.store.sql import SCHEMA_VERSION
from tests.helpers import API_KEY, chat_line, integrity, write_jsonl
from tests.reliability.support import RUN_ARGS, CliResult, cli, cli_env, command, verify_guarantees

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)


def digest(db: Path) -> str:
    """The database's bytes (WAL included): a fault must leave them exactly as they were."""
    data = b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")) if p.is_file())
    return hashlib.sha256(data).hexdigest()


def one_line_error(result: CliResult) -> str:
    assert result.code == 1, (result.code, result.err[-800:])
    assert result.err.count("\n") == 1 and result.err.startswith("asyncbatch: error: "), result.err[-800:]
    return result.err


def lines(n: int, prefix: str = "r", text: str = "hello") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}{i:05d}", text) for i in range(n)]


async def submit(db: Path, emu: Any, source: list[dict[str, Any]], tmp: Path, **run: Any) -> str:
    done = await cli("submit", str(write_jsonl(tmp / "in.jsonl", source)), "--db", str(db),
                     "--base-url", emu.openai_base_url, **run)
    assert done.code == 0, done.err
    return done.out.split()[-1]


def set_version(db: Path, version: int) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {version}")


async def test_a_store_written_by_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        job_id = await submit(db, emu, lines(20), tmp_path)
        set_version(db, 99)
        before = digest(db)
        for args in (("run",), ("status", job_id), ("list",), ("submit", str(tmp_path / "in.jsonl"))):
            err = one_line_error(await cli(*args, "--db", str(db)))
            assert "schema version 99" in err and "upgrade asyncbatch" in err
        with pytest.raises(SchemaVersionError):
            async with BatchManager(db):
                pass
        assert digest(db) == before
        set_version(db, SCHEMA_VERSION)  # "the fault is fixed": the user installed the version that wrote it
        done = await cli("run", "--db", str(db), *RUN_ARGS)
        assert done.code == 0 and f"{job_id} done: 20 succeeded" in done.out, done.err
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` read-only for this user: by its mode, or (root ignores modes) by the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute: cannot make a file read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_a_read_only_store_is_read_refused_for_writing_and_a_restart_after_the_fix_finishes(
    tmp_path: Path,
) -> None:
    """Reading commands open the store read-only and work; writing ones say ``is read-only`` in one line."""
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        job_id = await submit(db, emu, lines(30), tmp_path)
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        with read_only(db):
            for args in (("run", *RUN_ARGS), ("submit", str(tmp_path / "in.jsonl"))):
                err = one_line_error(await cli(*args, "--db", str(db)))
                assert f"job store {db} is read-only" in err, err
            for args in (("list",), ("status", job_id, "--json"), ("cost", job_id)):
                done = await cli(*args, "--db", str(db))
                assert done.code == 0 and (job_id in done.out or "cost" in args), done.err
            with pytest.raises(StoreError, match="read-only"):
                async with BatchManager(db):
                    pass
            async with BatchManager(SQLiteStore(db, read_only=True)) as bm:
                assert (await bm.status(job_id)).counts.total == 30
        # readers may leave SQLite's index beside a WAL store (the directory is writable), never a change
        wal = db.with_name(db.name + "-wal")
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before and (not wal.exists() or not wal.stat().st_size)
        assert emu.ledger.totals().files == 0
        done = await cli("run", "--db", str(db), *RUN_ARGS)
        assert done.code == 0 and f"{job_id} done: 30 succeeded" in done.out, done.err
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process's write lock on the store (an exclusive transaction held open)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def manager(db: Path, emu: Any, **options: Any) -> BatchManager:
    provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url, retry=FAST_RETRY)
    options.setdefault("poll_interval", 0.02)
    options.setdefault("max_poll_interval", 0.1)
    return BatchManager(SQLiteStore(db, busy_timeout=0.3), provider=provider, **options)


async def test_a_locked_store_gives_a_clear_error_and_nothing_half_done(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(complete_after=1.0), data_dir=tmp_path / "emu") as emu:
        async with manager(db, emu, lease_seconds=1.0) as bm:
            first = await bm.submit(lines(40, "a"))
            before = digest(db)
            with locked(db):
                with pytest.raises(StoreError, match="locked"):
                    await bm.submit(lines(40, "b"))
                with pytest.raises(StoreError, match="locked"):
                    await bm.wait(first.id)
            assert digest(db) == before and [j.id for j in await bm.list_jobs()] == [first.id]
            # locked in the middle of a run: the run stops with the error, the store stays sound
            async with anyio.create_task_group() as tg:
                async def lock_mid_run() -> None:
                    await anyio.sleep(0.2)
                    with locked(db):
                        await anyio.sleep(1.0)

                tg.start_soon(lock_mid_run)
                with pytest.raises(StoreError, match="locked"):
                    await bm.wait(first.id)
            assert integrity(db) == "ok"
        async with manager(db, emu, lease_seconds=1.0) as bm:
            second = await bm.submit(lines(40, "b"))
            with anyio.fail_after(30):
                await bm.run()
        verify_guarantees(db, emu, first.id, expect_all_succeeded=True)
        verify_guarantees(db, emu, second.id, expect_all_succeeded=True)


async def test_a_briefly_locked_store_is_waited_for(tmp_path: Path) -> None:
    """The command line waits out another writer (60 s busy timeout) instead of failing at once."""
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        job_id = await submit(db, emu, lines(10), tmp_path)
        with locked(db):
            proc = await anyio.open_process(command("run", "--db", str(db), *RUN_ARGS), env=cli_env())
            await anyio.sleep(1.5)
            assert proc.returncode is None
        with anyio.fail_after(60):
            await proc.wait()
        assert proc.returncode == 0
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)


def with_file_size_limit(limit: int, *args: str) -> list[str]:
    """The CLI under RLIMIT_FSIZE: no file it writes may grow past ``limit`` bytes, as on a full disk."""
    code = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
            "os.execv(sys.executable, [sys.executable, '-m', 'asyncbatch', *sys.argv[2:]])")
    return [sys.executable, "-c", code, str(limit), *args]


async def limited(limit: int, *args: str) -> CliResult:
    with anyio.fail_after(120):
        proc = await anyio.run_process(with_file_size_limit(limit, *args), env=cli_env(), check=False)
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def test_a_full_disk_under_the_store_fails_cleanly_and_a_restart_finishes(tmp_path: Path) -> None:
    big_text = "lorem ipsum dolor " * 60
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        first = await submit(db, emu, lines(50), tmp_path)
        before = digest(db)
        source = write_jsonl(tmp_path / "big.jsonl", lines(3000, "b", big_text))
        # submitting: the store cannot grow to hold the new job
        err = one_line_error(await limited(1_000_000, "submit", str(source), "--db", str(db),
                                           "--base-url", emu.openai_base_url))
        assert "job store" in err and ("full" in err or "I/O" in err or "too large" in err), err
        assert integrity(db) == "ok"
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 50
        done = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)
        assert done.code == 0, done.err
        second = done.out.split()[-1]
        assert digest(db) != before
        # running: results cannot be stored
        size = db.stat().st_size
        err = one_line_error(await limited(size + 400_000, "run", "--db", str(db), *RUN_ARGS,
                                           "--max-requests-per-batch", "500"))
        assert integrity(db) == "ok"
        done = await cli("run", "--db", str(db), *RUN_ARGS, "--max-requests-per-batch", "500")
        assert done.code == 0, done.err
        verify_guarantees(db, emu, first, expect_all_succeeded=True)
        verify_guarantees(db, emu, second, expect_all_succeeded=True)


async def test_a_full_disk_under_the_spool_fails_cleanly_and_a_restart_finishes(tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        job_id = await submit(db, emu, lines(200), tmp_path)
        failing = cli_env(ASYNCBATCH_FAILPOINTS="spool_write:1:enospc")
        err = one_line_error(await cli("run", "--db", str(db), *RUN_ARGS, env=failing))
        assert "No space left on device" in err and "spool" in err, err
        assert not list((tmp_path / "jobs.db.spool").rglob("*.tmp")), "a half-written spool file was left"
        assert integrity(db) == "ok" and emu.ledger.totals().files == 0
        done = await cli("run", "--db", str(db), *RUN_ARGS)
        assert done.code == 0, done.err
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
