"""A submit can be retried safely: an idempotency key (or an explicit job id) names the job it made, and a retry
with the same requests returns it; other requests under the same name are a clear error, nothing stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from asyncbatch import BatchManager
from asyncbatch.errors import JobConflictError
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, write_jsonl
from tests.reliability.support import cli


def manager(db: Path) -> BatchManager:
    return BatchManager(db, provider=OpenAIProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1"))


async def test_a_retried_submit_returns_the_first_job_and_other_requests_conflict(tmp_path: Path) -> None:
    lines = [chat_line(f"r{i}") for i in range(5)]
    async with manager(tmp_path / "jobs.db") as bm:
        source = write_jsonl(tmp_path / "in.jsonl", lines)
        first = await bm.submit(source, idempotency_key="nightly-1")
        again = await bm.submit(source, idempotency_key="nightly-1")
        assert again.id == first.id and again.counts.total == 5
        with pytest.raises(JobConflictError, match="nightly-1"):
            await bm.submit(write_jsonl(tmp_path / "more.jsonl", [*lines, chat_line("extra")]),
                            idempotency_key="nightly-1")
        with pytest.raises(JobConflictError, match="nightly-1"):
            await bm.submit([chat_line("r0", "changed"), *lines[1:]], idempotency_key="nightly-1")
        other_tenant = await bm.submit(lines, idempotency_key="nightly-1", owner="team-b")
        assert other_tenant.id != first.id  # keys are per owner
        by_id = await bm.submit(lines, job_id="job_mine")
        assert (await bm.submit(lines, job_id="job_mine")).id == "job_mine"
        with pytest.raises(JobConflictError, match="job_mine"):
            await bm.submit(lines[:2], job_id="job_mine")
        assert [j.id for j in await bm.list_jobs()] == [first.id, other_tenant.id, by_id.id]


async def test_the_same_requests_without_a_key_make_a_second_job_with_a_warning(tmp_path: Path) -> None:
    lines = [chat_line(f"r{i}") for i in range(3)]
    warnings: list[str] = []
    async with manager(tmp_path / "jobs.db") as bm:
        first = await bm.submit(lines, warn=warnings.append)
        assert warnings == []
        second = await bm.submit(lines, warn=warnings.append)
    assert second.id != first.id
    assert len(warnings) == 1 and first.id in warnings[0] and "pays twice" in warnings[0]


async def test_the_cli_retry_with_the_same_job_id_prints_the_same_job(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(3)])
    args = ("submit", str(source), "--db", str(tmp_path / "jobs.db"), "--job-id", "job_nightly",
            "--base-url", "http://127.0.0.1:9/v1")
    first, again = await cli(*args), await cli(*args)
    assert first.code == again.code == 0, again.err
    assert first.out.split()[-1] == again.out.split()[-1] == "job_nightly"
    other = write_jsonl(tmp_path / "other.jsonl", [chat_line("x")])
    conflict = await cli("submit", str(other), *args[2:])
    assert conflict.code == 1 and "job_nightly" in conflict.err and "UNIQUE" not in conflict.err
