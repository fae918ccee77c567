"""Chaos: `asyncbatch run` processes SIGKILLed at random moments while the emulator injects faults everywhere.

The kill schedule comes from a seeded RNG (``CHAOS_SEED``), so a failure can be replayed exactly as far as
the kills go; the emulator's faults and outcomes are seeded too. Afterwards the emulator's ledger and the
store must show: every custom_id with exactly one final result, nothing billed twice, nothing sent again
after it succeeded, no shard with two provider batches, and a sound database.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.failpoints import POINTS
from tests.helpers import chat_line, integrity, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, cli_env, drain, spawn, stop, verify_guarantees

pytestmark = pytest.mark.slow

CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "20240607"))
REQUESTS = 20_000
MIN_KILLS = 30
CHAOS_RUN = (*RUN_ARGS, "--max-requests-per-batch", "250", "--ingest-chunk", "400")


def chaos_lines(n: int) -> list[dict[str, Any]]:
    """Every 10th request fails once, every 97th twice, every 331st three times (HTTP 500 inside the batch,
    so the job has at least four generations of batches), every 500th for good (HTTP 400)."""
    def marker(i: int) -> str:
        if i % 500 == 7:
            return " [[fail:400]]"
        if i % 331 == 11:
            return " [[fail_attempts:3]]"
        if i % 97 == 5:
            return " [[fail_attempts:2]]"
        return " [[fail_attempts:1]]" if i % 10 == 3 else ""

    return [chat_line(f"req-{i:05d}", f"item {i}{marker(i)}") for i in range(n)]


def kill_plan(rng: random.Random) -> tuple[float, str]:
    """When the next run dies: after a random delay, or earlier at a random failpoint (its n-th passage)."""
    delay = rng.uniform(0.25, 1.0)
    if rng.random() < 0.4:
        return delay, f"{rng.choice(POINTS)}:{rng.randint(1, 25)}"
    return delay, ""


def chaos_config() -> EmulatorConfig:
    """10% of every endpoint group's calls fail (429, 500, 503, dropped), a tenth of downloads are cut short,
    a tenth of creates are dropped after the batch was made, and the 4th batch expires half done."""
    storm = FaultSpec(rate_429=0.03, rate_500=0.025, rate_503=0.025, drop_rate=0.02, truncate_rate=0.1,
                      drop_after_create_rate=0.1, retry_after=0.05)
    return EmulatorConfig(seed=CHAOS_SEED, complete_after=6.0, expire_batches=[4], expire_done_fraction=0.5,
                          faults={"*": storm})


async def test_random_sigkills_under_faults_lose_nothing_and_pay_once(tmp_path: Path) -> None:
    rng = random.Random(CHAOS_SEED)
    async with run_emulator(chaos_config(), data_dir=tmp_path / "emu") as emu:
        db = tmp_path / "jobs.db"
        source = write_jsonl(tmp_path / "input.jsonl", chaos_lines(REQUESTS))
        done = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url,
                         "--max-attempts", "5")
        assert done.code == 0, done.err
        job_id = done.out.split()[-1]
        kills, schedule = 0, []
        started = time.monotonic()
        while kills < MIN_KILLS + 10:
            delay, point = kill_plan(rng)
            schedule.append((round(delay, 2), point))
            proc = await spawn("run", "--db", str(db), *CHAOS_RUN, env=cli_env(ASYNCBATCH_FAILPOINTS=point))
            with anyio.move_on_after(delay):
                await proc.wait()
            if proc.returncode == 0:
                break
            await stop(proc)
            assert proc.returncode == -signal.SIGKILL, f"run failed on its own: {(await drain(proc))[1][-800:]}"
            kills += 1
        killing = time.monotonic() - started
        final = await cli("run", "--db", str(db), *CHAOS_RUN)
        assert final.code == 0, final.err[-800:]
        print(f"chaos: {kills} kills in {killing:.1f}s, then the last run took "
              f"{time.monotonic() - started - killing:.1f}s; schedule {schedule}")
        counts = verify_guarantees(db, emu, job_id)
        assert kills >= MIN_KILLS, f"the job finished after only {kills} kills: make it longer"
        faults = emu.ledger.totals().faults
        print(f"chaos: {len(emu.ledger.batches_created())} batches, faults injected: {faults}")
    assert counts == {"succeeded": REQUESTS - REQUESTS // 500, "failed": REQUESTS // 500}, counts
    assert integrity(db) == "ok"
    assert {"429", "500", "503", "drop", "truncate", "drop_after_create"} <= set(faults), faults
