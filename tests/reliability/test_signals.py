"""SIGTERM and SIGINT: `asyncbatch run` stops within seconds, says so, exits 130, and a restart continues."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import anyio
import pytest

from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from tests.helpers import chat_line, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, drain, spawn, verify_guarantees

pytestmark = pytest.mark.slow

STOP_WITHIN = 3.0  # seconds from the signal to the exit


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_quickly_says_so_and_a_restart_continues(tmp_path: Path, signum: signal.Signals) -> None:
    rng = random.Random(int(signum))
    storm = FaultSpec(rate_429=0.05, rate_500=0.05, drop_rate=0.05, truncate_rate=0.2, retry_after=0.05)
    # three generations of batches of at least 3 s each: the job outlasts the three interrupted runs
    config = EmulatorConfig(complete_after=3.0, fail_attempts=2, faults={"*": storm}, seed=5)
    lines = [chat_line(f"r{i:04d}", f"item {i}") for i in range(3000)]
    db = tmp_path / "jobs.db"
    run = ("--db", str(db), *RUN_ARGS, "--max-requests-per-batch", "200", "--ingest-chunk", "50")
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        submitted = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", str(db),
                              "--base-url", emu.openai_base_url)
        assert submitted.code == 0, submitted.err
        job_id = submitted.out.split()[-1]
        for _ in range(3):  # stopped while uploading and creating, while polling, while ingesting
            proc = await spawn("run", *run)
            await anyio.sleep(rng.uniform(0.6, 2.0))
            assert proc.returncode is None, "the run ended before the signal"
            proc.send_signal(signum)
            sent = time.monotonic()
            with anyio.fail_after(STOP_WITHIN + 2):
                await proc.wait()
            took = time.monotonic() - sent
            _, err = await drain(proc)
            print(f"{signum.name}: stopped {took:.2f}s after the signal")
            assert took < STOP_WITHIN, f"took {took:.2f}s to stop"
            assert proc.returncode == 130, (proc.returncode, err[-500:])
            assert f"stopped by {signum.name}" in err and "run again to resume" in err
            assert "Traceback" not in err
        final = await cli("run", *run)
        assert final.code == 0, final.err[-500:]
        assert f"{job_id} done: 3000 succeeded" in final.out
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
