"""Contention: several workers drive one store at once; leases keep them from doing any shard's work twice."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, cli_env, drain, spawn, stop, until, verify_guarantees

pytestmark = pytest.mark.slow

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)


def manager(db: Path, emu: Any, **options: Any) -> BatchManager:
    """A worker of its own (its own lease owner id, connection and HTTP session) on the shared store."""
    provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url, retry=FAST_RETRY)
    return BatchManager(db, provider=provider, **options)


RUN = (*RUN_ARGS, "--max-requests-per-batch", "150", "--ingest-chunk", "40")


async def test_three_processes_on_one_store_finish_the_job_exactly_once(tmp_path: Path) -> None:
    storm = FaultSpec(rate_429=0.03, rate_500=0.03, rate_503=0.02, drop_rate=0.02, truncate_rate=0.1,
                      drop_after_create_rate=0.1, retry_after=0.05)
    config = EmulatorConfig(complete_after=2.0, seed=17, expire_batches=[3], faults={"*": storm})
    lines = [chat_line(f"c{i:05d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 4 == 0 else ""))
             for i in range(6000)]
    db = tmp_path / "jobs.db"
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        submitted = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", str(db),
                              "--base-url", emu.openai_base_url)
        assert submitted.code == 0, submitted.err
        job_id = submitted.out.split()[-1]
        workers = [await spawn("run", "--db", str(db), *RUN) for _ in range(3)]
        await anyio.sleep(2.0)  # the job needs two generations of batches of at least 2 s each
        await stop(workers[1])  # one worker dies holding leases: the others take its shards over
        with anyio.fail_after(120):
            for worker in (workers[0], workers[2]):
                await worker.wait()
        outputs = [await drain(w) for w in (workers[0], workers[2])]
        assert [workers[0].returncode, workers[2].returncode] == [0, 0], [err[-500:] for _, err in outputs]
        assert all(f"{job_id} done: 6000 succeeded" in out for out, _ in outputs)
        assert workers[1].returncode == -signal.SIGKILL
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)


async def test_a_worker_waiting_out_a_long_retry_after_keeps_its_lease(tmp_path: Path) -> None:
    """A create answered 429 with a Retry-After three times the lease: the waiting worker must keep the shard,
    or a second worker takes it over, finds no batch, creates one, and the first one's retry creates another
    (the same requests run and are paid for twice). The lease must never even come close to lapsing."""
    config = EmulatorConfig(complete_after=0.2,
                            faults={"batches_create": FaultSpec(rate_429=1.0, retry_after=2.0, max_faults=1)})
    lines = [chat_line(f"r{i}") for i in range(20)]
    db = tmp_path / "jobs.db"
    lease = 0.6
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        options: dict[str, Any] = {"poll_interval": 0.02, "max_poll_interval": 0.1}
        async with manager(db, emu, lease_seconds=lease, **options) as first, \
                manager(db, emu, lease_seconds=0.15, **options) as second:
            job = await first.submit(lines)
            left: list[float] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.wait, job.id)
                await until(lambda: bool(emu.ledger.faults))  # the first worker's create got a 429: it waits 2s
                tg.start_soon(second.wait, job.id)  # and looks for lapsed leases four times as often
                for _ in range(150):
                    left.append(lease_left(db))
                    await anyio.sleep(0.01)
        verify_guarantees(db, emu, job.id, expect_all_succeeded=True)
        assert len(emu.ledger.batches_created()) == 1
    assert min(left) > lease / 4, f"the lease came within {min(left):.3f}s of lapsing"


def lease_left(db: Path) -> float:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (expires,) = conn.execute("SELECT lease_expires FROM shards").fetchone()
    return float(expires) - time.time()


def stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP), from /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


async def test_a_worker_frozen_past_its_lease_creates_no_second_batch_when_it_wakes(tmp_path: Path) -> None:
    """A process frozen (a suspended VM, a closed laptop) after committing ``creating`` and before sending the
    create, for longer than its lease. Another worker takes the shard over, creates its batch and finishes
    the job. The frozen one, woken, must learn that the shard is no longer its own before it creates."""
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i:02d}") for i in range(30)]
    run = ("run", "--db", str(db), *RUN_ARGS, "--lease-seconds", "1")
    async with run_emulator(EmulatorConfig(complete_after=0.2), data_dir=tmp_path / "emu") as emu:
        submitted = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", str(db),
                              "--base-url", emu.openai_base_url)
        job_id = submitted.out.split()[-1]
        frozen = await spawn(*run, env=cli_env(ASYNCBATCH_FAILPOINTS="before_create:1:stop"))
        try:
            await until(lambda: stopped(frozen.pid))
            other = await cli(*run)
            assert other.code == 0 and f"{job_id} done: 30 succeeded" in other.out, other.err
        finally:
            frozen.send_signal(signal.SIGCONT)
        with anyio.fail_after(30):
            await frozen.wait()
        _, err = await drain(frozen)
        assert frozen.returncode == 0, err[-500:]
        assert len(emu.ledger.batches_created()) == 1
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
