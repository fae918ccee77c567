"""Crash safety with real processes: `asyncbatch run` is SIGKILLed at every dangerous step and restarted.

Each failpoint kills the process (SIGKILL, like a power cut) at an exact place between a remote effect and
the commit that records it. Afterwards the emulator's ledger and the store must show every custom_id with
exactly one final result, nothing billed twice, nothing sent again after it succeeded, and a sound database.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch.emulator import EmulatorConfig, run_emulator
from tests.helpers import API_KEY, chat_line, verify_exactly_once, write_jsonl

pytestmark = pytest.mark.slow


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "ASYNCBATCH_"))}
    env.update(OPENAI_API_KEY=API_KEY, **extra)
    return env


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    with anyio.fail_after(120):
        proc = await anyio.run_process([sys.executable, "-m", "asyncbatch", *args], env=env or cli_env(), check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


async def submit(db: str, tmp_path: Path, emu: Any, lines: list[dict[str, Any]], *extra: str) -> tuple[str, str]:
    path = write_jsonl(tmp_path / "input.jsonl", lines)
    code, out, err = await cli("submit", str(path), "--db", str(db), "--base-url", emu.openai_base_url, *extra)
    assert code == 0, err
    return db, out.strip().splitlines()[-1]


def crash_lines(n: int) -> list[dict[str, Any]]:
    # one request in five fails on its first submission, so resubmission happens
    return [chat_line(f"req-{i:05d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 5 == 0 else "")) for i in range(n)]


RUN = ("--poll-interval", "0.05", "--max-poll-interval", "0.2", "--max-requests-per-batch", "120",
       "--ingest-chunk", "25")

POINTS = ["after_upload", "before_create", "after_create", "during_poll", "mid_ingest", "before_finish",
          "after_resubmit_plan", "after_create:2", "mid_ingest:3"]


async def test_sigkill_at_every_failpoint_then_resume_loses_nothing_and_pays_once(tmp_path: Path, db_url: str) -> None:
    config = EmulatorConfig(complete_after=0.3)
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit(db_url, tmp_path, emu, crash_lines(600))
        for point in POINTS:
            code, _, err = await cli("run", "--db", str(db), *RUN, env=cli_env(ASYNCBATCH_FAILPOINTS=point))
            assert code == -signal.SIGKILL, f"failpoint {point} was not reached (exit {code}): {err[-500:]}"
        code, out, err = await cli("run", "--db", str(db), *RUN)
        assert code == 0, err
        assert f"{job_id} done" in out
        counts = verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)
        assert counts == {"succeeded": 600}
        # every kill left work that a restart had to pick up: more batches than the 5 first-attempt shards
        assert len(emu.ledger.batches_created()) > 5


async def test_sigkill_at_random_moments_then_resume(tmp_path: Path, db_url: str) -> None:
    import random

    rng = random.Random(11)  # seeded: a failure can be replayed
    config = EmulatorConfig(complete_after=1.0)
    lines = [chat_line(f"req-{i:05d}", f"item {i}" + (" [[fail_attempts:2]]" if i % 7 == 0 else ""))
             for i in range(400)]
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit(db_url, tmp_path, emu, lines)
        kills = 0
        for _ in range(40):
            proc = await anyio.open_process([sys.executable, "-m", "asyncbatch", "run", "--db", str(db), *RUN],
                                            env=cli_env())
            await anyio.sleep(rng.uniform(0.3, 1.2))
            if proc.returncode is not None:
                assert proc.returncode == 0, f"run failed on its own: {proc.returncode}"
                break
            proc.kill()
            kills += 1
            await proc.wait()
        code, _, err = await cli("run", "--db", str(db), *RUN)
        assert code == 0, err
        assert kills >= 4
        verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)


async def test_two_processes_on_one_store_finish_without_double_submission(tmp_path: Path, db_url: str) -> None:
    config = EmulatorConfig(complete_after=0.3)
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit(db_url, tmp_path, emu, crash_lines(500))
        results: list[tuple[int, str, str]] = []

        async def one() -> None:
            results.append(await cli("run", "--db", str(db), *RUN))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
        assert [r[0] for r in results] == [0, 0], [r[2][-300:] for r in results]
        verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)


async def test_sigterm_stops_within_seconds_and_says_so(tmp_path: Path, db_url: str) -> None:
    async with run_emulator(EmulatorConfig(complete_after=30), data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit(db_url, tmp_path, emu, crash_lines(20))
        proc = await anyio.open_process([sys.executable, "-m", "asyncbatch", "run", "--db", str(db), *RUN],
                                        env=cli_env())
        await anyio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(5):
            await proc.wait()
        assert proc.stderr is not None
        err = (await proc.stderr.receive()).decode()
        assert proc.returncode == 130 and "stopped by SIGTERM" in err
        emu.config.complete_after = 0
        code, out, _ = await cli("run", "--db", str(db), *RUN)
        assert code == 0 and f"{job_id} done" in out
