"""Provider faults beyond the transient ones: what a batch API does that no HTTP retry can fix.

A batch that completes with no output file, a batch failed for the account's enqueued-token limit, results
that expired on the provider before they were downloaded, and result lines for custom_ids the job never had.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from asyncbatch import BatchManager, JobStatus, RequestState
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, integrity
from tests.reliability.support import RUN_ARGS, cli, verify_guarantees

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)
CLAUDE = "claude-haiku-4-5"


def manager(db: Path, emu: Any, *, provider: str = "openai", **options: Any) -> BatchManager:
    chosen = (OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url, retry=FAST_RETRY)
              if provider == "openai" else
              AnthropicProvider(api_key=API_KEY, base_url=emu.anthropic_base_url, retry=FAST_RETRY))
    options.setdefault("poll_interval", 0.02)
    options.setdefault("max_poll_interval", 0.1)
    return BatchManager(db, provider=chosen, **options)


async def run_job(bm: BatchManager, lines: list[dict[str, Any]], **submit: Any) -> tuple[Any, dict[str, Any]]:
    job = await bm.submit(lines, **submit)
    with anyio.fail_after(60):
        job = await bm.wait(job.id)
    return job, {r.custom_id: r async for r in bm.results(job.id)}


async def test_a_completed_batch_with_no_output_file_settles_every_request_from_the_error_file(
    tmp_path: Path,
) -> None:
    """Every request failed, so the batch ends ``completed`` with ``output_file_id: null``: permanent failures
    end failed with their error, retryable ones are sent again and succeed."""
    db = tmp_path / "jobs.db"
    permanent = [chat_line(f"p{i}", "[[fail:400]]") for i in range(10)]
    retryable = [chat_line(f"t{i}", "[[fail_attempts:1]]") for i in range(10)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(db, emu) as bm:
        job, results = await run_job(bm, permanent)
        (shard,) = await bm.shards(job.id)
        assert (shard.batch_status, shard.output_file_id) == ("completed", None) and shard.error_file_id
        assert job.status is JobStatus.DONE and job.counts.failed == 10
        assert all(r.status is RequestState.FAILED and r.status_code == 400 and r.error for r in results.values())
        verify_guarantees(db, emu, job.id)

        job2, results2 = await run_job(bm, retryable)
        first, second = await bm.shards(job2.id)
        assert first.output_file_id is None and second.output_file_id is not None
        assert job2.counts.completed == 10 and {r.attempt for r in results2.values()} == {2}
        verify_guarantees(db, emu, job2.id, expect_all_succeeded=True)


async def test_token_limit_exceeded_holds_the_job_and_resubmits_smaller_without_using_attempts(
    tmp_path: Path,
) -> None:
    """40 requests of ~10 prompt tokens against a 120-token enqueued limit: the batch of 40 fails, the job
    waits, then tries batches of 20 (which fail too), then of 10, which fit. No attempt is used up: with
    ``max_attempts=1`` every request still succeeds, at attempt 1, run exactly once."""
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i:02d}", "x" * 40) for i in range(40)]
    hold = 0.5
    async with run_emulator(EmulatorConfig(token_limit=120), data_dir=tmp_path / "emu") as emu, \
            manager(db, emu, capacity_hold=hold, lease_seconds=1.5) as bm:
        job, results = await run_job(bm, lines, max_attempts=1)
        shards = await bm.shards(job.id)
        created = emu.ledger.batches_created()
    assert job.counts.completed == 40 and {r.attempt for r in results.values()} == {1}
    assert [s.request_count for s in shards] == [40, 20, 20, 10, 10, 10, 10]
    assert [s.batch_status for s in shards[:3]] == ["failed"] * 3
    assert all(s.errors[0]["code"] == "token_limit_exceeded" for s in shards[:3])
    # each smaller try was made only after the hold that followed the failure before it
    assert created[1].created_at - created[0].created_at >= hold
    assert created[3].created_at - max(created[1].created_at, created[2].created_at) >= hold
    verify_guarantees(db, emu, job.id, expect_all_succeeded=True)


async def test_a_single_request_over_the_token_limit_fails_after_its_attempts(tmp_path: Path) -> None:
    """Halving stops at one request: a request that alone exceeds the limit uses up its attempts (no endless
    loop) and ends failed with the provider's reason."""
    db = tmp_path / "jobs.db"
    lines = [chat_line("small", "hi"), chat_line("huge", "x" * 2000)]
    async with run_emulator(EmulatorConfig(token_limit=100), data_dir=tmp_path / "emu") as emu, \
            manager(db, emu, capacity_hold=0.05, lease_seconds=0.6) as bm:
        _, results = await run_job(bm, lines, max_attempts=2)
        assert emu.ledger.submissions("huge") == 0  # never ran: every batch holding it failed validation
    assert results["small"].ok
    huge = results["huge"]
    assert huge.status is RequestState.FAILED and huge.error is not None
    assert huge.error.code == "token_limit_exceeded" and "Enqueued token limit" in huge.error.message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_results_that_expired_before_download_fail_clearly_and_are_not_paid_again(
    tmp_path: Path, provider: str
) -> None:
    """The provider deleted the results before they were read (OpenAI: the output file expired; Anthropic:
    the results are past their 29 days). The requests ran and were paid for, so they are not sent again
    behind the user's back: they end failed with ``results_expired``, and the job ends instead of failing
    every run."""
    db = tmp_path / "jobs.db"
    model = "gpt-5.4-mini" if provider == "openai" else CLAUDE
    lines = [chat_line(f"r{i}", model=model, max_tokens=16) for i in range(12)]
    async with run_emulator(EmulatorConfig(results_ttl=0), data_dir=tmp_path / "emu") as emu, \
            manager(db, emu, provider=provider) as bm:
        job, results = await run_job(bm, lines)
        ledger = emu.ledger
    # each ran and was paid for exactly once, in the one batch there was; nothing was sent again
    assert len(ledger.batches_created()) == 1 and ledger.totals().billed == 12
    assert all(len(ledger.requests_for(w)) == 1 for w in {r.custom_id for r in ledger.requests})
    assert len(ledger.requests) == 12 and integrity(db) == "ok"
    assert job.status is JobStatus.DONE and job.counts.failed == 12
    error = results["r0"].error
    assert error is not None and error.code == "results_expired" and "expired" in error.message


async def test_result_lines_for_unknown_custom_ids_are_kept_and_reported(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i:03d}") for i in range(30)]
    async with run_emulator(EmulatorConfig(stray_results=2), data_dir=tmp_path / "emu") as emu:
        source = tmp_path / "in.jsonl"
        source.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
        submitted = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)
        job_id = submitted.out.split()[-1]
        done = await cli("run", "--db", str(db), *RUN_ARGS, "--max-requests-per-batch", "10")
        assert done.code == 0 and f"{job_id} done: 30 succeeded" in done.out, done.err
        assert "6 result lines for custom_ids this job does not know" in done.err, done.err
        status = await cli("status", job_id, "--db", str(db))
        assert "6 result lines for custom_ids this job does not know" in status.out, status.out
        verify_guarantees(db, emu, job_id, expect_all_succeeded=True)
    async with BatchManager(db) as bm:
        orphans = await bm.orphans(job_id)
        attempts = [r async for r in bm.results(job_id, all_attempts=True)]
    assert len(orphans) == 6 and all(wire.startswith("stray-") for _, wire, _ in orphans)
    assert all(msgspec.json.decode(line)["wire_id"] == wire for _, wire, line in orphans)
    assert len(attempts) == 30  # the strays were kept aside, not stored as results
