"""`asyncbatch worker`: a real process serving a store, fed by submits from other processes.

It picks up what is submitted after it started, quickly; it exports Prometheus metrics; SIGTERM stops it cleanly;
and SIGKILLs at random moments, each followed by a restart, lose nothing and pay nothing twice.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.model import JobStatus
from tests.helpers import chat_line, in_store, write_jsonl
from tests.reliability.support import cli, cli_env, drain, spawn, stop, verify_guarantees

WORKER_ARGS = ("--poll-interval", "0.05", "--max-poll-interval", "0.3", "--lease-seconds", "5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job_status(db: Path, job_id: str) -> JobStatus:
    return in_store(db, lambda store: store.get_job(job_id, with_counts=False)).status


async def wait_for(predicate: Any, *, within: float, every: float = 0.02) -> float:
    """Seconds until ``predicate()`` (sync or async) held: what another process does, with no event to await."""
    started = time.monotonic()
    with anyio.fail_after(within):
        while True:
            held = predicate()
            if held if not hasattr(held, "__await__") else await held:
                return time.monotonic() - started
            await anyio.sleep(every)


async def test_a_worker_serves_jobs_submitted_after_it_started_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    port = free_port()
    async with run_emulator(EmulatorConfig(complete_after=0.0), data_dir=tmp_path / "emu") as emu:
        env = cli_env(OPENAI_BASE_URL=emu.openai_base_url)
        worker = await spawn("-v", "worker", "--db", str(db), "--metrics-port", str(port), *WORKER_ARGS, env=env)
        try:
            async with aiohttp.ClientSession() as http:
                async def healthy() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_for(healthy, within=20, every=0.05)
                for batches in (1, 2):  # the second job comes while the worker is already idle
                    lines = [chat_line(f"r{batches}-{i}") for i in range(20)]
                    done = await cli("submit", str(write_jsonl(tmp_path / f"in{batches}.jsonl", lines)), "--db",
                                     str(db), env=env)
                    assert done.code == 0, done.err
                    job_id = done.out.split()[-1]
                    latency = await wait_for(lambda n=batches: len(emu.ledger.batches_created()) >= n, within=10,
                                             every=0.005)
                    assert latency < 2.0, f"the first batch came {latency:.2f}s after submit returned"
                    await wait_for(lambda j=job_id: job_status(db, j) is JobStatus.DONE, within=30, every=0.05)
                    verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
            metrics = {m.name: m for m in text_string_to_metric_families(text)}
            jobs = {s.labels["status"]: s.value for s in metrics["asyncbatch_jobs"].samples}
            assert jobs == {"done": 2.0}
            requests = {s.labels["state"]: s.value for s in metrics["asyncbatch_requests"].samples}
            assert requests["succeeded"] == 40.0 and requests["pending"] == 0.0
            created = [s.value for s in metrics["asyncbatch_batches_created"].samples if s.name.endswith("_total")]
            assert created == [2.0]
            stored = {s.labels["outcome"]: s.value for s in metrics["asyncbatch_results_stored"].samples
                      if s.name.endswith("_total")}
            assert stored["succeeded"] == 40.0
            assert sum(s.value for s in metrics["asyncbatch_polls"].samples if s.name.endswith("_total")) >= 2
        finally:
            worker.send_signal(signal.SIGTERM)
            with anyio.fail_after(5):
                await worker.wait()
        _, err = await drain(worker)
    assert worker.returncode == 0, err[-800:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert "batch_" in err and "created for shard" in err and "done: 20 succeeded" in err  # -v tells the story


async def test_sigterm_mid_job_leaves_it_for_the_next_worker(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(complete_after=2.0), data_dir=tmp_path / "emu") as emu:
        env = cli_env(OPENAI_BASE_URL=emu.openai_base_url)
        source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(50)])
        job_id = (await cli("submit", str(source), "--db", str(db), env=env)).out.split()[-1]
        first = await spawn("worker", "--db", str(db), *WORKER_ARGS, "--max-requests-per-batch", "10", env=env)
        await wait_for(lambda: len(emu.ledger.batches_created()) >= 2, within=20)
        first.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        with anyio.fail_after(5):
            await first.wait()
        assert first.returncode == 0 and time.monotonic() - stopped < 5
        # its leases were given back: the next worker carries on at once, not after they expire
        second = await spawn("worker", "--db", str(db), *WORKER_ARGS, env=env)
        try:
            waited = await wait_for(lambda: job_status(db, job_id) is JobStatus.DONE, within=30, every=0.05)
            assert waited < 15
        finally:
            await stop(second, signal.SIGTERM)
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)


@pytest.mark.slow
async def test_workers_killed_at_random_and_restarted_lose_nothing_and_pay_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261205"))
    rng = random.Random(seed)
    storm = FaultSpec(rate_429=0.03, rate_500=0.03, rate_503=0.02, drop_rate=0.02, truncate_rate=0.1,
                      drop_after_create_rate=0.1, retry_after=0.05)
    config = EmulatorConfig(seed=seed, complete_after=3.0, faults={"*": storm})
    db = tmp_path / "jobs.db"
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        env = cli_env(OPENAI_BASE_URL=emu.openai_base_url)
        lines = [chat_line(f"req-{i:04d}", f"item {i}{' [[fail_attempts:1]]' if i % 10 == 3 else ''}")
                 for i in range(5000)]
        done = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", str(db),
                         "--max-attempts", "4", env=env)
        assert done.code == 0, done.err
        job_id = done.out.split()[-1]
        kills = 0
        while kills < 12 and job_status(db, job_id) is not JobStatus.DONE:
            worker = await spawn("worker", "--db", str(db), *WORKER_ARGS, "--max-requests-per-batch", "250",
                                 env=env)
            await anyio.sleep(rng.uniform(0.3, 1.5))
            await stop(worker)  # SIGKILL
            assert worker.returncode == -signal.SIGKILL, (await drain(worker))[1][-800:]
            kills += 1
        last = await spawn("worker", "--db", str(db), *WORKER_ARGS, "--max-requests-per-batch", "250", env=env)
        try:
            await wait_for(lambda: job_status(db, job_id) is JobStatus.DONE, within=180, every=0.2)
        finally:
            await stop(last, signal.SIGTERM)
        assert last.returncode == 0
        counts = verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
    assert kills >= 10, f"the job finished after {kills} kills: make it longer"
    assert counts == {"succeeded": 5000}
