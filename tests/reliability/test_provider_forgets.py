"""When the provider no longer knows what asyncbatch recorded, refuses a batch for its size, or has a batch
cancelled behind asyncbatch's back: each case ends by a recorded rule, never stuck, never paid twice, and one
job's trouble never holds up another job of the store.

"The provider restarted" is a new emulator on the same port: it has forgotten every file and batch, exactly as
an account purge, another project's key or a provider-side loss look to a client.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager, JobStatus, RequestState
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, verify_exactly_once, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, cli_env, spawn, until

FAST = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openai(emu: Any) -> OpenAIProvider:
    made = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url, retry=FAST)
    made.visibility_grace = 0.5  # a 404 half a second after the create is a forgotten batch (30 s by default)
    return made


def manager(db: Path, provider: Any, **options: Any) -> BatchManager:
    return BatchManager(db, provider=provider, poll_interval=0.02, max_poll_interval=0.1, **options)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_batch_the_restarted_provider_no_longer_knows_is_sent_again_and_healthy_jobs_finish(
    tmp_path: Path, kind: str
) -> None:
    db, port = tmp_path / "jobs.db", free_port()
    lines = [chat_line(f"r{i}", model="claude-haiku-4-5" if kind == "anthropic" else "gpt-5.4-mini", max_tokens=9)
             for i in range(8)]
    async with run_emulator(EmulatorConfig(complete_after=3600), port=port, data_dir=tmp_path / "emu1") as before:
        made = openai(before) if kind == "openai" else AnthropicProvider(
            api_key=API_KEY, base_url=before.anthropic_base_url, retry=FAST, visibility_grace=0.2)
        async with manager(db, made) as bm:
            lost = await bm.submit(lines)
            with anyio.move_on_after(1.0):  # created and running when the provider "restarts"
                await bm.wait(lost.id)
            assert len(before.ledger.batches_created()) == 1
    async with run_emulator(EmulatorConfig(complete_after=0.0), port=port, data_dir=tmp_path / "emu2") as after:
        made = openai(after) if kind == "openai" else AnthropicProvider(
            api_key=API_KEY, base_url=after.anthropic_base_url, retry=FAST, visibility_grace=0.2)
        async with manager(db, made) as bm:
            healthy = await bm.submit([chat_line(f"h{i}") for i in range(4)])
            with anyio.fail_after(30):
                jobs = await bm.run([lost.id, healthy.id])
            shards = await bm.shards(lost.id)
            results = [r async for r in bm.results(lost.id, all_attempts=True)]
        verify_exactly_once(db, after.ledger, lost.id, expect_all_succeeded=True)
        verify_exactly_once(db, after.ledger, healthy.id, expect_all_succeeded=True)
    assert [j.status for j in jobs] == [JobStatus.DONE, JobStatus.DONE]
    vanished, again = shards
    assert vanished.phase.value == "abandoned" and vanished.errors[0]["code"] == "batch_vanished"
    assert again.attempt == 2 and again.phase.value == "ingested"
    assert {r.attempt for r in results} == {2}  # nothing ran at the forgetful provider, nothing paid there


async def test_requests_of_a_vanished_batch_fail_with_a_readable_reason_once_attempts_are_spent(tmp_path: Path) -> None:
    db, port = tmp_path / "jobs.db", free_port()
    first = run_emulator(EmulatorConfig(complete_after=3600), port=port, data_dir=tmp_path / "emu1")
    async with first as before, manager(db, openai(before)) as bm:
        job = await bm.submit([chat_line(f"r{i}") for i in range(3)], max_attempts=1)
        with anyio.move_on_after(1.0):
            await bm.wait(job.id)
    async with run_emulator(EmulatorConfig(), port=port, data_dir=tmp_path / "emu2") as after:
        async with manager(db, openai(after)) as bm:
            with anyio.fail_after(30):
                job = await bm.wait(job.id)
            results = [r async for r in bm.results(job.id)]
        assert after.ledger.batches_created() == []  # nothing sent again: no attempt was left
    assert job.status is JobStatus.DONE and job.counts.failed == 3
    assert {r.error.code for r in results if r.error} == {"batch_vanished"}
    assert all("no longer knows batch" in r.error.message for r in results if r.error)


async def test_cancel_always_ends_a_job_whose_batch_the_provider_forgot(tmp_path: Path) -> None:
    db, port = tmp_path / "jobs.db", free_port()
    first = run_emulator(EmulatorConfig(complete_after=3600), port=port, data_dir=tmp_path / "emu1")
    async with first as before, manager(db, openai(before)) as bm:
        job = await bm.submit([chat_line(f"r{i}") for i in range(3)])
        with anyio.move_on_after(1.0):
            await bm.wait(job.id)
    async with run_emulator(EmulatorConfig(), port=port, data_dir=tmp_path / "emu2") as after:
        async with manager(db, openai(after)) as bm:
            await bm.cancel(job.id)  # the provider answers 404 to the cancel: logged, not fatal
            with anyio.fail_after(30):
                job = await bm.wait(job.id)
        assert after.ledger.batches_created() == []
    assert job.status is JobStatus.CANCELLED and job.counts.cancelled == 3


async def test_an_input_file_deleted_before_create_is_uploaded_again(tmp_path: Path) -> None:
    """The run dies between upload and create; meanwhile the file is deleted at the provider (as a user or a
    retention policy does). The next run sees create refuse the file, uploads it again from the store, and
    goes on."""
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
        job_id = (await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)).out.split()[-1]
        dying = await spawn("run", "--db", str(db), *RUN_ARGS, env=cli_env(ASYNCBATCH_FAILPOINTS="before_create"))
        await dying.wait()
        (uploaded,) = [f for f in emu.ledger.files if f.purpose == "batch"]
        async with manager(db, openai(emu)) as bm:
            await openai(emu)._client().request("DELETE", f"/files/{uploaded.id}")
            with anyio.fail_after(30):
                job = await bm.wait(job_id)
        files = [f for f in emu.ledger.files if f.purpose == "batch"]
        verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)
    assert job.status is JobStatus.DONE and len(files) == 2 and len(emu.ledger.batches_created()) == 1


@pytest.mark.parametrize("limit", ["too_many_tasks", "anthropic_413"])
async def test_a_batch_refused_for_its_size_is_split_smaller_without_using_attempts(tmp_path: Path, limit: str) -> None:
    """The provider's real limit is below the planned batch (a lower quota than documented): the refused batch
    is sent again in halves, then quarters..., and every request still succeeds at its first attempt."""
    db = tmp_path / "jobs.db"
    config = EmulatorConfig(max_batch_lines=7) if limit == "too_many_tasks" else EmulatorConfig(
        anthropic_max_requests=7)
    model = "gpt-5.4-mini" if limit == "too_many_tasks" else "claude-haiku-4-5"
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        made = openai(emu) if limit == "too_many_tasks" else AnthropicProvider(
            api_key=API_KEY, base_url=emu.anthropic_base_url, retry=FAST, visibility_grace=0.2)
        async with manager(db, made) as bm:
            job = await bm.submit([chat_line(f"r{i}", model=model, max_tokens=9) for i in range(24)], max_attempts=1)
            with anyio.fail_after(60):
                job = await bm.wait(job.id)
            results = [r async for r in bm.results(job.id)]
            shards = await bm.shards(job.id)
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
    assert job.status is JobStatus.DONE and job.counts.completed == 24
    assert {r.attempt for r in results} == {1}
    ran = [s for s in shards if s.batch_status is not None and s.batch_status.value == "completed"]
    assert shards[0].request_count == 24 and ran and max(s.request_count for s in ran) <= 7


async def test_a_batch_cancelled_at_the_provider_is_not_sent_again(tmp_path: Path) -> None:
    """Someone cancels the batch on the provider's console: what ran is kept, the rest ends cancelled (it is not
    sent again behind their back), and the job ends."""
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(complete_after=3600), data_dir=tmp_path / "emu") as emu:
        async with manager(db, openai(emu)) as bm:
            job = await bm.submit([chat_line(f"r{i}") for i in range(6)])
            async with anyio.create_task_group() as tg:
                tg.start_soon(bm.wait, job.id)
                await until(lambda: bool(emu.ledger.batches_created()), within=10)
                (batch,) = emu.ledger.batches_created()
                await openai(emu)._client().request("POST", f"/batches/{batch.id}/cancel")  # not through us
            job = await bm.status(job.id)
            results = [r async for r in bm.results(job.id)]
        assert len(emu.ledger.batches_created()) == 1
    assert job.status is JobStatus.DONE and job.counts.cancelled == 6
    assert {r.status for r in results} == {RequestState.CANCELLED} and {r.attempt for r in results} == {1}
    # the provider's own word where its error file has the line, ours where it reported nothing
    assert {r.error.code for r in results if r.error} <= {"batch_cancelled", "cancelled_at_provider"}
