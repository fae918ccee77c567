"""Many `asyncbatch worker` processes on one PostgreSQL store, as on many machines: killed, frozen past their
leases, claiming to be on other hosts. Leases (expiry by the database's clock, fencing tokens) and SKIP LOCKED
claims must keep every custom_id to one final result, billed once, and every shard to one provider batch.
"""

from __future__ import annotations

import random
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psycopg
import pytest

from asyncbatch.emulator import EmulatorConfig, run_emulator
from tests.helpers import chat_line, write_jsonl
from tests.pg import Server
from tests.reliability.support import RUN_ARGS, cli, cli_env, drain, spawn, stop, until, verify_guarantees
from tests.reliability.test_chaos import CHAOS_SEED, chaos_config, chaos_lines
from tests.reliability.test_contention import stopped

pytestmark = pytest.mark.slow

REQUESTS = 20_000
MIN_KILLS = 30
LEASE = 2.0
WORKER = (*RUN_ARGS, "--lease-seconds", str(LEASE), "--max-requests-per-batch", "250")


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def job_status(url: str, job_id: str) -> str:
    return str(query(url, "SELECT status FROM jobs WHERE id = %s", job_id)[0][0])


async def submit(url: str, tmp_path: Path, emu: Any, lines: list[dict[str, Any]], *extra: str) -> str:
    done = await cli("submit", str(write_jsonl(tmp_path / "input.jsonl", lines)), "--db", url,
                     "--base-url", emu.openai_base_url, *extra)
    assert done.code == 0, done.err
    return done.out.split()[-1]


async def test_three_workers_killed_and_frozen_at_random_lose_nothing_and_pay_once(tmp_path: Path,
                                                                                   pg_url: str) -> None:
    rng = random.Random(CHAOS_SEED)
    async with run_emulator(chaos_config(), data_dir=tmp_path / "emu") as emu:
        job_id = await submit(pg_url, tmp_path, emu, chaos_lines(REQUESTS), "--max-attempts", "5")

        def start(failpoints: str = "") -> Any:
            return spawn("worker", "--db", pg_url, *WORKER, env=cli_env(ASYNCBATCH_FAILPOINTS=failpoints))

        workers: list[anyio.abc.Process] = [await start() for _ in range(3)]
        kills, frozen_for, started = 0, 0.0, time.monotonic()
        try:
            while job_status(pg_url, job_id) != "done":
                assert time.monotonic() - started < 600, f"the job did not end ({kills} kills)"
                await anyio.sleep(rng.uniform(0.2, 0.8))
                if kills >= MIN_KILLS + 4 or job_status(pg_url, job_id) == "done":
                    continue
                slot = rng.randrange(3)
                await stop(workers[slot])
                assert workers[slot].returncode == -signal.SIGKILL, (await drain(workers[slot]))[1][-800:]
                kills += 1
                # once, the restarted worker freezes right before a create, past its lease, then wakes
                workers[slot] = await start("before_create:1:stop" if kills == 12 else "")
                if kills == 12:
                    frozen = workers[slot]
                    await until(partial(stopped, frozen.pid), within=60)
                    pause = time.monotonic()
                    await anyio.sleep(LEASE * 2.5)  # another worker takes the shard over meanwhile
                    frozen.send_signal(signal.SIGCONT)
                    frozen_for = time.monotonic() - pause
        finally:
            for worker in workers:
                await stop(worker, signal.SIGTERM)
        print(f"postgres workers: {kills} kills in {time.monotonic() - started:.1f}s, "
              f"{len(emu.ledger.batches_created())} batches, faults {emu.ledger.totals().faults}")
        assert [w.returncode for w in workers] == [0, 0, 0], [(await drain(w))[1][-500:] for w in workers]
        assert kills >= MIN_KILLS, f"the job finished after only {kills} kills: make it longer"
        assert frozen_for > LEASE * 2
        counts = verify_guarantees(pg_url, emu, job_id)
    assert counts == {"succeeded": REQUESTS - REQUESTS // 500, "failed": REQUESTS // 500}, counts


async def taken_over_after(url: str, emu: Any, tmp_path: Path, host: str, lease: float) -> float:
    """Seconds from the SIGKILL of a worker on host-a holding a shard with a batch in flight to the shard's
    claim by a worker that says it is on ``host``; that worker then ends the job, exactly once."""
    run = (*RUN_ARGS, "--lease-seconds", str(lease))
    job_id = await submit(url, tmp_path, emu, [chat_line(f"{host}-{i}") for i in range(40)])
    first = await spawn("worker", "--db", url, *run, env=cli_env(ASYNCBATCH_HOST="host-a"))
    await until(lambda: bool(query(url, "SELECT 1 FROM shards WHERE batch_id IS NOT NULL")), within=30)
    (held_by,) = query(url, "SELECT lease_owner FROM shards")[0]
    await stop(first)  # SIGKILL: its lease stays until it lapses
    killed = time.monotonic()
    second = await spawn("worker", "--db", url, *run, env=cli_env(ASYNCBATCH_HOST=host))
    try:
        await until(lambda: query(url, "SELECT lease_owner FROM shards") != [(held_by,)], within=30)
        taken = time.monotonic() - killed
        await until(lambda: job_status(url, job_id) == "done", within=30)
    finally:
        await stop(second, signal.SIGTERM)
    verify_guarantees(url, emu, job_id, expect_all_succeeded=True)
    return taken


async def test_a_worker_on_another_host_waits_for_the_lease_to_lapse_one_on_this_host_does_not(
        tmp_path: Path, pg_server: Server) -> None:
    """A SIGKILLed worker's shards: a worker that says it is on the same host sees the process gone and takes
    them at once; one on another host cannot know, and waits until the lease has expired by the database's
    clock."""
    lease = 6.0
    async with run_emulator(EmulatorConfig(complete_after=1.0), data_dir=tmp_path / "emu") as emu:
        other_host = await taken_over_after(pg_server.database(), emu, tmp_path, "host-b", lease)
        same_host = await taken_over_after(pg_server.database(), emu, tmp_path, "host-a", lease)
    print(f"taken over after {other_host:.2f}s (another host), {same_host:.2f}s (this host)")
    # renewed every lease/3: at the kill, at least 2/3 of a lease was left, all of which host-b waited out
    assert other_host >= lease * 2 / 3 - 0.2, other_host
    assert same_host < lease / 2, same_host
