"""A serving engine (``asyncbatch worker``, ``BatchManager.start()``) notices jobs that other processes submit
through the store itself: PostgreSQL's LISTEN/NOTIFY, SQLite's data version. Its own polling for new jobs is set
to half a minute here, so only the store's wake-up can make it start a job within a second."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.engine import Engine, EngineConfig
from asyncbatch.store import open_store
from tests.engine.test_engine import manager
from tests.helpers import API_KEY, chat_line
from tests.reliability.support import until


async def test_a_serving_engine_starts_a_job_another_process_submits_within_a_second(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # the engine builds the job's provider from what it recorded
    async with run_emulator(EmulatorConfig(complete_after=0.1), data_dir=tmp_path / "emu") as emu:
        async with manager(db_url, emu):  # the store exists before the engine opens it
            pass
        store = open_store(db_url)
        await store.open()
        engine = Engine(store, config=EngineConfig(job_poll_interval=30, poll_interval=0.05, max_poll_interval=0.1))
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(engine.serve)
                await anyio.sleep(0.5)  # the engine has looked at the (empty) store and waits
                submitter: BatchManager
                async with manager(db_url, emu) as submitter:
                    job = await submitter.submit([chat_line("a"), chat_line("b")])
                    submitted = time.monotonic()
                    await until(lambda: bool(emu.ledger.batches_created()), within=10)
                    started_after = time.monotonic() - submitted
                    with anyio.fail_after(10):
                        async for _event in submitter.watch(job.id, poll_interval=0.05):
                            pass
                    assert (await submitter.status(job.id)).counts.completed == 2
                tg.cancel_scope.cancel()
        finally:
            await engine.pool.aclose()
            await store.close()
    assert started_after < 1.0, f"the job's first batch came {started_after:.2f}s after its submit"
