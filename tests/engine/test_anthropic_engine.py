"""The engine on Anthropic: the same OpenAI-format lines, run on Claude, with the same durability."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager, JobStatus, RequestState
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.export import write_results
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.anthropic import AnthropicProvider
from tests.engine.test_crash import RUN, cli
from tests.helpers import API_KEY, chat_line, verify_exactly_once

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)
CLAUDE = "claude-haiku-4-5"


def provider(emu: Any, **options: Any) -> AnthropicProvider:
    return AnthropicProvider(api_key=API_KEY, base_url=emu.anthropic_base_url, retry=FAST_RETRY,
                             visibility_grace=1.0, **options)


def manager(db: Path, emu: Any, **options: Any) -> BatchManager:
    return BatchManager(db, provider=provider(emu), poll_interval=0.02, max_poll_interval=0.1, **options)


def claude_line(custom_id: str, text: str = "hello", **body: Any) -> dict[str, Any]:
    return chat_line(custom_id, text, model=CLAUDE, max_tokens=64, **body)


ODD_IDS = ["with.dots.in.it", "x" * 100, "ünïcödé-id", 'quote"and space', "plain_ok-1"]


async def test_openai_lines_run_on_claude_and_map_back_to_the_users_ids(tmp_path: Path) -> None:
    lines = [claude_line(cid, f"question {i}") for i, cid in enumerate(ODD_IDS)]
    lines.append({"custom_id": "native", "params": {"model": CLAUDE, "max_tokens": 32,
                                                    "messages": [{"role": "user", "content": "native line"}]}})
    lines.append(chat_line("system-too", "hi", model=CLAUDE,
                           messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]))
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(db, emu) as bm:
        job = await bm.submit(lines)
        job = await bm.wait(job.id)
        results = {r.custom_id: r async for r in bm.results(job.id)}
        sent = [line for batch in emu.ledger.batches_created() for line in emu.sent_requests(batch.id)]
        await write_results(bm, job.id, tmp_path / "openai.jsonl", fmt="openai")
        ledger = emu.ledger
    assert job.status is JobStatus.DONE and job.counts.completed == len(lines)
    assert set(results) == {*ODD_IDS, "native", "system-too"}
    r = results["with.dots.in.it"]
    assert r.provider == "anthropic" and r.body["type"] == "message" and r.text
    assert r.usage is not None and r.usage.input_tokens > 0
    by_text = {json.dumps(s["params"]["messages"]): s for s in sent}
    system_line = next(s for s in sent if s["params"].get("system"))
    assert system_line["params"]["system"] == "Be brief."
    assert system_line["params"]["messages"] == [{"role": "user", "content": "hi"}]
    assert all(len(s["custom_id"]) <= 64 for s in by_text.values())
    exported = [json.loads(line) for line in (tmp_path / "openai.jsonl").read_text().splitlines()]
    assert {e["custom_id"] for e in exported} == set(results)
    assert all(e["response"]["body"]["object"] == "chat.completion" for e in exported)
    verify_exactly_once(db, ledger, job.id, expect_all_succeeded=True)


async def test_untranslatable_feature_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    from asyncbatch import UnsupportedFeatureError

    lines = [claude_line("ok"), claude_line("many", n=3)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(tmp_path / "j.db", emu) as bm:
        with pytest.raises(UnsupportedFeatureError) as info:
            await bm.submit(lines)
        assert (info.value.line, info.value.custom_id, info.value.field) == (2, "many", "body.n")
        assert emu.ledger.totals().batches == 0 and await bm.list_jobs() == []


async def test_over_the_limit_the_job_is_split_into_several_batches(tmp_path: Path) -> None:
    lines = [claude_line(f"r{i}", f"q {i}") for i in range(25)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        async with manager(tmp_path / "jobs.db", emu, max_requests_per_batch=10) as bm:
            job = await bm.submit(lines)
            job = await bm.wait(job.id)
            shards = await bm.shards(job.id)
        assert len(emu.ledger.batches_created("anthropic")) == 3
    assert [s.request_count for s in shards] == [10, 10, 5] and job.counts.completed == 25


async def test_errored_and_expired_results_are_resubmitted_and_permanent_ones_kept(tmp_path: Path) -> None:
    lines = [claude_line(f"retry{i}", f"q {i} [[fail_attempts:1]]") for i in range(4)]
    lines += [claude_line(f"exp{i}", f"e {i} [[expire]]") for i in range(2)]
    lines += [claude_line("bad", "[[fail:400]]")]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        async with manager(tmp_path / "jobs.db", emu) as bm:
            job = await bm.submit(lines, max_attempts=2)
            job = await bm.wait(job.id)
            results = {r.custom_id: r async for r in bm.results(job.id)}
        ledger = emu.ledger
    assert all(results[f"retry{i}"].ok and results[f"retry{i}"].attempt == 2 for i in range(4))
    expired = results["exp0"]
    assert expired.status is RequestState.FAILED and expired.attempt == 2 and expired.outcome == "expired"
    bad = results["bad"]
    assert bad.status is RequestState.FAILED and bad.attempt == 1 and bad.status_code == 400
    assert bad.error is not None and bad.error.code == "invalid_request_error"
    verify_exactly_once(tmp_path / "jobs.db", ledger, job.id)


POINTS = ["after_upload", "before_create", "after_create", "during_poll", "mid_ingest", "before_finish",
          "after_resubmit_plan", "after_create:2"]


@pytest.mark.slow
async def test_sigkill_at_every_failpoint_on_anthropic(tmp_path: Path) -> None:
    lines = [claude_line(f"req.{i:04d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 5 == 0 else ""))
             for i in range(500)]
    db = tmp_path / "jobs.db"
    env = {"ANTHROPIC_API_KEY": API_KEY}
    async with run_emulator(EmulatorConfig(complete_after=0.3), data_dir=tmp_path / "emu") as emu:
        async with manager(db, emu) as bm:  # submit from Python: the job records visibility_grace=1
            job = await bm.submit(lines)
        from tests.engine.test_crash import cli_env

        for point in POINTS:
            code, _, err = await cli("run", "--db", str(db), *RUN, env=cli_env(ASYNCBATCH_FAILPOINTS=point, **env))
            assert code == -signal.SIGKILL, f"failpoint {point} was not reached (exit {code}): {err[-500:]}"
        with anyio.fail_after(120):
            code, out, err = await cli("run", "--db", str(db), *RUN, env=cli_env(**env))
        assert code == 0 and f"{job.id} done" in out, err
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
        assert len(emu.ledger.batches_created("anthropic")) > 5


@pytest.mark.slow
async def test_running_batches_of_equal_size_are_verified_before_adoption(tmp_path: Path) -> None:
    """Three equal shards are created at once and the process dies before recording them: on resume the
    batches are still running, so nothing tells them apart; the engine waits until they end and their ids
    say whose each is, instead of guessing (a wrong guess pays twice)."""
    from tests.engine.test_crash import cli_env

    lines = [claude_line(f"q{i}", f"item {i}") for i in range(30)]
    db = tmp_path / "jobs.db"
    env = {"ANTHROPIC_API_KEY": API_KEY}
    async with run_emulator(EmulatorConfig(complete_after=2.0), data_dir=tmp_path / "emu") as emu:
        async with manager(db, emu) as bm:
            job = await bm.submit(lines)
        run = ("--poll-interval", "0.05", "--max-poll-interval", "0.2", "--max-requests-per-batch", "10")
        code, _, _ = await cli("run", "--db", str(db), *run, env=cli_env(ASYNCBATCH_FAILPOINTS="after_create", **env))
        assert code == -signal.SIGKILL
        code, out, err = await cli("-v", "run", "--db", str(db), *run, env=cli_env(**env))
        assert code == 0 and f"{job.id} done" in out, err
        assert "waiting for it to end to check" in err
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
        assert len(emu.ledger.batches_created("anthropic")) == 3


@pytest.mark.parametrize("skew", [720.0, -720.0, 5 * 3600.0])
async def test_a_lost_create_is_adopted_whatever_our_clock_says_of_anthropics(tmp_path: Path, skew: float) -> None:
    """Our clock 12 minutes ahead of Anthropic's (or behind, or hours off) and one create whose reply was lost:
    the batch is found and adopted by its ids, never created a second time (nothing compares the two clocks)."""
    from asyncbatch.emulator import FaultSpec

    db = tmp_path / "jobs.db"
    config = EmulatorConfig(complete_after=1.0, faults={"anthropic_create": FaultSpec(drop_after_create_rate=1.0,
                                                                                       max_faults=1)})
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        emu.clock.advance(-skew)  # Anthropic's clock, against ours
        async with manager(db, emu) as bm:
            job = await bm.submit([claude_line(f"r{i}") for i in range(6)])
            with anyio.fail_after(60):
                job = await bm.wait(job.id)
            shards = await bm.shards(job.id)
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
        assert len(emu.ledger.batches_created()) == 1 and [f.kind for f in emu.ledger.faults] == ["drop_after_create"]
    assert len(shards) == 1 and shards[0].batch_id == emu.ledger.batches_created()[0].id
