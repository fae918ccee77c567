"""Who may open a store, and what opening it may change.

Reading commands (``status``, ``list``, ``results``, ``cost``, ``watch``) open the store read-only: they work on
another user's readable file (run here as user ``nobody`` in a forked process) and on a read-only mount (the
immutable attribute on the file and its directory), and change nothing. Any command pointed at another
application's SQLite file refuses it and leaves its bytes as they were. A store deleted or replaced under a
running process stops it with an error instead of success reported into a file nobody can open.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from asyncbatch import BatchManager, StoreError
from asyncbatch.cli import main as cli_main
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.store import SQLiteStore
from asyncbatch.store.sqlite import APPLICATION_ID
from tests.helpers import chat_line, write_jsonl
from tests.reliability.support import RUN_ARGS, CliResult, cli, cli_env, drain, spawn, stop, until

NOBODY = 65534
READING = (("list",), ("status", "{job}", "--json"), ("cost", "{job}"), ("results", "{job}", "-o", "{out}"))
WRITING = (("run", *RUN_ARGS), ("submit", "{input}"), ("cancel", "{job}"))


def files(directory: Path) -> dict[str, str]:
    """Every file of ``directory`` and a hash of its bytes: what must not change."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A directory others can enter and read (pytest's own is the owner's alone)."""
    path = Path(tempfile.mkdtemp(prefix="asyncbatch-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        shutil.rmtree(path)


def submitted(directory: Path, n: int = 3) -> tuple[Path, str]:
    """A store in ``directory`` with one job, made by this user through the command line (nothing is sent)."""
    db = directory / "jobs.db"
    source = write_jsonl(directory / "in.jsonl", [chat_line(f"r{i}") for i in range(n)])
    done = subprocess.run([sys.executable, "-m", "asyncbatch", "submit", "--db", str(db), "--base-url",
                           "http://127.0.0.1:9/v1", str(source)], capture_output=True, text=True, check=True,
                          env=cli_env())
    return db, done.stdout.split()[-1]


def expand(args: tuple[str, ...], **values: str) -> list[str]:
    return [a.format(**values) for a in args]


def as_user(uid: int, argv: list[str], scratch: Path) -> CliResult:
    """``asyncbatch ARGV`` as user ``uid``: a forked child drops to that user and runs the command line in
    process (the interpreter's own files may be unreadable to that user, so what it needs is imported first)."""
    for module in ("asyncbatch.manager", "asyncbatch.export", "asyncbatch.cost", "asyncbatch.progress",
                   "asyncbatch.webhooks", "aiosqlite", "anyio._backends._asyncio", "genai_prices"):
        importlib.import_module(module)
    out, err = scratch / "stdout", scratch / "stderr"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            sys.stdout, sys.stderr = out.open("w"), err.open("w")  # not the test runner's captured streams
            os.setgid(uid)
            os.setuid(uid)
            code = cli_main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return CliResult(os.waitstatus_to_exitcode(status), out.read_text(), err.read_text())


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")


def test_another_users_readable_store_can_be_read_and_is_left_untouched(shared: Path) -> None:
    needs_root()
    db, job = submitted(shared)
    db.chmod(0o644)  # the owner lets others read it; the directory is the owner's
    scratch = Path(tempfile.mkdtemp(prefix="asyncbatch-nobody-"))
    scratch.chmod(0o777)
    before = files(shared)
    try:
        for args in READING:
            done = as_user(NOBODY, [*expand(args, job=job, out=str(scratch / "out.jsonl")), "--db", str(db)], scratch)
            assert done.code == 0, (args, done.err)
        assert json.loads(as_user(NOBODY, ["status", job, "--db", str(db), "--json"], scratch).out)["counts"][
            "total"] == 3
        for args in WRITING:
            done = as_user(NOBODY, [*expand(args, job=job, input=str(shared / "in.jsonl")), "--db", str(db)],
                           scratch)
            assert done.code == 1 and f"job store {db} is read-only" in done.err, (args, done.err)
    finally:
        shutil.rmtree(scratch)
    assert files(shared) == before  # nothing written, nothing created beside it


def test_another_user_reads_what_the_owner_committed_while_it_runs(shared: Path) -> None:
    """The owner's process holds the store open with changes still in its write-ahead log: a reader who may
    not write the index beside it still sees them."""
    needs_root()
    db, job = submitted(shared)
    db.chmod(0o644)
    scratch = Path(tempfile.mkdtemp(prefix="asyncbatch-nobody-"))
    scratch.chmod(0o777)
    with contextlib.closing(sqlite3.connect(db)) as owner:
        owner.execute("PRAGMA wal_autocheckpoint = 0")
        owner.execute("UPDATE jobs SET metadata = '{\"seen\": \"yes\"}'")
        owner.commit()
        assert (shared / "jobs.db-wal").stat().st_size > 0  # not checkpointed: only in the log
        try:
            done = as_user(NOBODY, ["status", job, "--db", str(db), "--json"], scratch)
        finally:
            shutil.rmtree(scratch)
    assert done.code == 0 and json.loads(done.out)["metadata"] == {"seen": "yes"}, done.err


@contextlib.contextmanager
def read_only_mount(*paths: Path) -> Iterator[None]:
    """The immutable attribute on ``paths``: nobody, root included, may change them or create files in them."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", *map(str, paths)],
                                                         capture_output=True).returncode != 0:
        pytest.skip("no immutable attribute on this filesystem")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


async def test_a_store_on_a_read_only_mount_is_read_and_refused_for_writing(shared: Path, tmp_path: Path) -> None:
    db, job = submitted(shared)
    before = files(shared)
    with read_only_mount(db, shared):
        for args in READING:
            done = await cli(*expand(args, job=job, out=str(tmp_path / "out.jsonl")), "--db", str(db))
            assert done.code == 0, (args, done.err)
        for args in WRITING:
            done = await cli(*expand(args, job=job, input=str(tmp_path / "in.jsonl")), "--db", str(db))
            assert done.code == 1 and "read-only" in done.err and done.err.count("\n") == 1, (args, done.err)
        async with BatchManager(SQLiteStore(db, read_only=True)) as bm:
            assert (await bm.status(job)).counts.total == 3
            with pytest.raises(StoreError, match="read-only"):
                await bm.cancel(job)
    assert files(shared) == before
    assert sum(1 for line in (tmp_path / "out.jsonl").read_text().splitlines()) == 0  # nothing ran yet


def foreign_rollback_journal(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('keep me')")
        conn.commit()


def foreign_wal_with_its_own_id(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA application_id = 1179603048")  # what another application puts there
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE jobs (id TEXT)")  # even a table of the same name
        conn.commit()


def foreign_with_some_of_our_tables(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT)")
        conn.execute("CREATE TABLE results (id TEXT)")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()


@pytest.mark.parametrize("make", [foreign_rollback_journal, foreign_wal_with_its_own_id,
                                  foreign_with_some_of_our_tables])
async def test_another_applications_sqlite_file_is_refused_untouched(tmp_path: Path, make: object) -> None:
    db = tmp_path / "app" / "data.sqlite"
    db.parent.mkdir()
    make(db)  # type: ignore[operator]
    before = files(db.parent)
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line("a")])
    for args in (("list",), ("status", "job_x"), ("run", *RUN_ARGS), ("submit", str(source)), ("cancel", "job_x"),
                 ("watch", "job_x"), ("results", "job_x", "-o", str(tmp_path / "out.jsonl"))):
        done = await cli(*args, "--db", str(db))
        assert done.code == 1 and done.err.count("\n") == 1, (args, done.err)
        assert "is a SQLite file of another application, not an asyncbatch job store" in done.err
        assert "left untouched" in done.err and "Traceback" not in done.err
    for read_only in (False, True):
        with pytest.raises(StoreError, match="another application"):
            async with BatchManager(SQLiteStore(db, read_only=read_only)):
                pass
    assert files(db.parent) == before


async def test_stores_are_marked_and_older_unmarked_ones_are_recognised(tmp_path: Path) -> None:
    db, job = submitted(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        conn.execute("PRAGMA application_id = 0")  # as a store made before the mark
    assert (await cli("status", job, "--db", str(db))).code == 0  # read-only: recognised, left as it is
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
    assert (await cli("cancel", job, "--db", str(db))).code == 0  # a writing command marks it
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


async def test_reading_what_is_not_there_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="is empty: no job was ever submitted to it"):
        async with BatchManager(SQLiteStore(empty, read_only=True)):
            pass
    assert empty.stat().st_size == 0
    with pytest.raises(StoreError, match="no job store at"):
        async with BatchManager(SQLiteStore(tmp_path / "missing.db", read_only=True)):
            pass
    assert not (tmp_path / "missing.db").exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough to have a header of one" * 10)
    done = await cli("list", "--db", str(text))
    assert done.code == 1 and "is damaged or not an asyncbatch job store" in done.err


# --- a store deleted or replaced under a running process ---------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "replaced", "moved away"])
async def test_a_store_deleted_or_replaced_while_running_stops_run_with_an_error(tmp_path: Path, how: str) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(complete_after=1.0), data_dir=tmp_path / "emu") as emu:
        source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(20)])
        done = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)
        assert done.code == 0, done.err
        proc = await spawn("run", "--db", str(db), *RUN_ARGS, "--lease-seconds", "0.6")
        try:
            await until(lambda: emu.ledger.totals().batches >= 1, within=30)  # the run is under way
            if how == "deleted":
                db.unlink()
            elif how == "replaced":
                copy = tmp_path / "copy.db"
                shutil.copy(db, copy)
                copy.replace(db)  # a restored backup: another file at the same path
            else:
                db.rename(tmp_path / "elsewhere.db")
            with anyio.fail_after(30):
                code = await proc.wait()
            _, err = await drain(proc)
        finally:
            await stop(proc)
    assert code == 1, err
    assert f"job store {db} was {'deleted' if how != 'replaced' else 'replaced by another file'}" in err, err
    assert "done:" not in err


async def test_a_transaction_after_the_file_is_gone_fails_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    store = SQLiteStore(db)
    await store.open()
    try:
        db.unlink()
        with pytest.raises(StoreError, match="was deleted while this process was using it"):
            await store.acknowledge("job_x", ["a"])
        rows = await store._read("SELECT count(*) FROM jobs")
        assert rows[0][0] == 0
    finally:
        await store.close()
