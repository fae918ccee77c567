"""docs/usage.md says what the code does: the status vocabulary mapping, and Job.cost()."""

from __future__ import annotations

import re
from pathlib import Path

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.litellm import _status
from asyncbatch.model import BatchStatus, Job, JobStatus, RequestCounts
from asyncbatch.providers.base import BatchError
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line

USAGE = (Path(__file__).parents[2] / "docs" / "usage.md").read_text(encoding="utf-8")


def job(status: JobStatus, counts: RequestCounts, *, cancel_requested: bool = False) -> Job:
    return Job(id="j", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
               metadata={}, status=status, created_at=0, updated_at=0, counts=counts,
               cancel_requested=cancel_requested)


def test_the_documented_status_mapping_is_the_helpers_own() -> None:
    moving, settling = RequestCounts(total=2, in_flight=1, completed=1), RequestCounts(total=2, completed=2)
    rejected = [BatchError(code="token_limit_exceeded", message="too many")]
    cases = [
        (job(JobStatus.OPEN, RequestCounts(total=2, pending=2)), [], "validating"),
        (job(JobStatus.RUNNING, moving), [], "in_progress"),
        (job(JobStatus.RUNNING, settling), [], "finalizing"),
        (job(JobStatus.RUNNING, moving, cancel_requested=True), [], "cancelling"),
        (job(JobStatus.DONE, RequestCounts(total=2, completed=1, failed=1)), [], "completed"),
        (job(JobStatus.DONE, RequestCounts(total=2, failed=2)), rejected, "failed"),
        (job(JobStatus.CANCELLED, RequestCounts(total=2, cancelled=2)), [], "cancelled"),
    ]
    rows = re.findall(r"^\| `(\w+)`[^|]*\| `(\w+)` \|", USAGE, flags=re.M)
    assert len(rows) == len(cases)
    for (value, errors, word), row in zip(cases, rows, strict=True):
        assert _status(value, value.counts, errors) is BatchStatus(word)
        assert row == (value.status.value, word)


async def test_job_cost_is_documented_as_working_and_works(tmp_path: Path) -> None:
    assert "not there yet" not in USAGE and "await job.cost()" in USAGE
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(tmp_path / "jobs.db", provider=provider, poll_interval=0.02) as bm:
            await bm.wait((await bm.submit([chat_line("a")])).id)
            report = await (await bm.list_jobs())[0].cost()
    assert report.models[0].requests == 1 and report.batch_cost > 0
