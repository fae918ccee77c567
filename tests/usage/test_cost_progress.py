"""Cost reports (genai-prices), the progress display, and exactly-once consumption across a killed worker."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from asyncbatch import BatchManager, JobStatus, Outcome, RequestState, Result, Usage
from asyncbatch.cost import BATCH_DISCOUNT, job_cost, price_results
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.progress import NotebookDisplay, ProgressTracker, TerminalDisplay, auto_display, follow
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def billed(custom_id: str, model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> Result:
    return Result(custom_id=custom_id, status=RequestState.SUCCEEDED, attempt=1, outcome=Outcome.SUCCEEDED,
                  usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached),
                  model=model)


# --- cost ------------------------------------------------------------------------------------------------


def test_batch_prices_come_from_the_library_and_unknown_models_stay_unpriced() -> None:
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    results = [billed(f"m{i}", "gpt-5.4-mini", 1000, 200, cached=400) for i in range(10)]
    results += [billed("x1", "my-finetune-7b", 500, 50), billed("x2", "my-finetune-7b", 500, 50)]
    failed = Result(custom_id="f", status=RequestState.FAILED, attempt=1, outcome=Outcome.ERRORED,
                    usage=Usage(input_tokens=10**6, output_tokens=10**6), model="gpt-5.4-mini")
    report = price_results("job", "openai", [*results, failed], when=NOW)

    one = PriceUsage(input_tokens=1000, output_tokens=200, cache_read_tokens=400)
    live = calc_price(one, "gpt-5.4-mini", provider_id="openai", genai_request_timestamp=NOW).total_price
    batch = calc_price(one, "gpt-5.4-mini", provider_id="openai", genai_request_timestamp=NOW,
                       price_context={"processing": "batch"}).total_price
    mini, unknown = report.models
    assert (mini.model, mini.requests, mini.input_tokens, mini.cached_input_tokens) == ("gpt-5.4-mini", 10, 10000, 4000)
    assert mini.live_cost == live * 10 and mini.batch_cost == batch * 10 and mini.price_source == "batch price"
    assert not unknown.priced and unknown.batch_cost is None and unknown.requests == 2
    assert report.unpriced_requests == 2 and report.unpriced_models == ["my-finetune-7b"]
    assert report.batch_cost == batch * 10 and report.savings == (live - batch) * 10 > 0
    text = report.summary()
    unknown_line = next(line for line in text.splitlines() if "my-finetune-7b:" in line)
    assert "UNPRICED" in unknown_line and "$" not in unknown_line and "not included: 2 requests" in text


def test_a_model_without_a_batch_price_gets_the_published_discount() -> None:
    report = price_results("job", "openai", [billed("e", "text-embedding-3-small", 10**6, 0)], when=NOW)
    (emb,) = report.models
    assert emb.live_cost is not None and emb.batch_cost == emb.live_cost * BATCH_DISCOUNT
    assert "discount" in (emb.price_source or "")


def test_long_prompts_are_priced_at_their_tier() -> None:
    """A 300k-token prompt is dearer per token than a 1k one; grouping by tier keeps that exact."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    big, small = billed("big", "claude-sonnet-4-5", 300_000, 100), billed("small", "claude-sonnet-4-5", 1000, 100)
    report = price_results("job", "anthropic", [big, small], when=NOW)
    expected = sum(
        calc_price(PriceUsage(input_tokens=r.usage.input_tokens, output_tokens=100), "claude-sonnet-4-5",
                   provider_id="anthropic", genai_request_timestamp=NOW).total_price
        for r in (big, small) if r.usage is not None
    )
    assert report.live_cost == expected
    naive = calc_price(PriceUsage(input_tokens=301_000, output_tokens=200), "claude-sonnet-4-5",
                       provider_id="anthropic", genai_request_timestamp=NOW).total_price
    assert naive != expected  # summing first would have priced the small prompt at the long-context rate


async def test_job_cost_and_the_cost_command_count_every_billed_attempt(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i}", "x" * 40) for i in range(8)] + [chat_line("bad", "[[fail:400]]")]
    async with run_emulator(EmulatorConfig(fail_attempts=1), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider, poll_interval=0.02, max_poll_interval=0.1) as bm:
            job = await bm.wait((await bm.submit(lines)).id)
            report = await job_cost(bm, job.id)
            finals = [r async for r in bm.results(job.id)]
        billed_in_emulator = emu.ledger.totals().billed
    assert job.counts.completed == 8 and report.models[0].requests == billed_in_emulator == 8
    assert report.models[0].input_tokens == sum(r.usage.input_tokens for r in finals if r.ok and r.usage)
    assert report.batch_cost > 0 and report.savings == report.live_cost - report.batch_cost

    done = await anyio.run_process([sys.executable, "-m", "asyncbatch", "cost", job.id, "--db", str(db), "--json"])
    payload = json.loads(done.stdout)
    assert Decimal(payload["batch_cost"]) == report.batch_cost and Decimal(payload["savings"]) == report.savings
    assert payload["unpriced_requests"] == 0 and payload["prices"].startswith("genai-prices ")
    text = (await anyio.run_process([sys.executable, "-m", "asyncbatch", "cost", job.id, "--db", str(db)])).stdout
    assert b"gpt-5.4-mini: 8 billed requests" in text and b"saved $" in text


# --- progress --------------------------------------------------------------------------------------------


def test_eta_follows_the_recent_rate() -> None:
    from asyncbatch.model import Job, RequestCounts

    clock = [0.0]
    tracker = ProgressTracker(clock=lambda: clock[0])

    def job(done: int) -> Job:
        return Job(id="j", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
                   metadata={}, status=JobStatus.RUNNING, created_at=0, updated_at=0,
                   counts=RequestCounts(total=1000, completed=done, in_flight=1000 - done))

    assert tracker.update(job(0), []).eta is None
    clock[0] = 10.0
    progress = tracker.update(job(100), [])  # 10 per second, 900 to go
    assert progress.eta == 90.0 and progress.done == 100
    line = progress.line(bar=10)
    assert "[#.........] 100/1000" in line and "ETA 1:30" in line and "900 in flight" in line


def test_a_waiting_shard_says_why_on_the_progress_line() -> None:
    """A shard that waits out a rate limit or an unreachable provider is not just "in flight": its note shows."""
    from asyncbatch.model import Job, RequestCounts, Shard, ShardPhase

    job = Job(id="j", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
              metadata={}, status=JobStatus.RUNNING, created_at=0, updated_at=0,
              counts=RequestCounts(total=10, in_flight=10))
    shard = Shard(id=1, job_id="j", attempt=1, token="t", phase=ShardPhase.PLANNED, endpoint="/v1/chat/completions",
                  model="m", request_count=10, bytes=100, last_error="rate limited: retrying in 20s")
    line = ProgressTracker().update(job, [shard]).line(bar=0)
    assert "0/10 | waiting: rate limited: retrying in 20s" in line
    done = Shard(id=1, job_id="j", attempt=1, token="t", phase=ShardPhase.INGESTED, endpoint="/v1/chat/completions",
                 model="m", request_count=10, bytes=100, last_error="old news")
    assert "waiting:" not in ProgressTracker().update(job, [done]).line(bar=0)


def test_eta_is_the_same_for_every_viewer_whenever_it_started() -> None:
    """`run` and `watch` disagreed (0:01 against 7:59 at the same moment): each estimated from what it had
    sampled itself. Now the ETA comes from the store: the first batch's creation and the counts."""
    from asyncbatch.model import Job, RequestCounts, Shard, ShardPhase
    from asyncbatch.progress import estimate_eta

    def job(done: int) -> Job:
        return Job(id="j", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
                   metadata={}, status=JobStatus.RUNNING, created_at=0, updated_at=0,
                   counts=RequestCounts(total=1000, completed=done, in_flight=1000 - done))

    shards = [Shard(id=i, job_id="j", attempt=1, token="t", phase=ShardPhase.SUBMITTED, endpoint="/v1/embeddings",
                    model=None, request_count=500, bytes=1, creating_at=at) for i, at in ((1, 120.0), (2, 100.0))]
    clock = [100.0]
    early = ProgressTracker(clock=lambda: clock[0])  # `run`: watching since the start
    assert early.update(job(0), shards).eta is None  # nothing finished: no rate yet
    clock[0] = 150.0
    early.update(job(10), shards)
    clock[0] = 160.0
    late = ProgressTracker(clock=lambda: clock[0])  # `watch`, started just now
    assert early.update(job(400), shards).eta == late.update(job(400), shards).eta == 90.0  # 600 left at 400/60s
    assert estimate_eta(job(400), shards, 160.0) == 90.0
    assert estimate_eta(job(1000), shards, 160.0) == 0.0


def test_terminal_display_writes_once_off_a_terminal_and_notebook_updates_one_output() -> None:
    from asyncbatch.model import RequestCounts
    from asyncbatch.progress import JobProgress

    first = JobProgress(job_id="j", status="running", counts=RequestCounts(total=4, completed=1), batches={},
                        attempt=1)
    last = JobProgress(job_id="j", status="done", counts=RequestCounts(total=4, completed=4),
                       batches={"completed": 1}, attempt=1, eta=0.0)
    out = io.StringIO()  # not a terminal: nothing is redrawn, the final state is written once at close
    terminal = TerminalDisplay(out)
    terminal.show([first])
    terminal.show([last])
    assert out.getvalue() == ""
    terminal.close()
    (line,) = out.getvalue().splitlines()
    assert "4/4" in line and "1 completed" in line and "\x1b[" not in line

    calls: list[tuple[str, Any]] = []

    class Handle:
        def update(self, content: Any) -> None:
            calls.append(("update", content))

    def display(content: Any, display_id: bool) -> Handle:
        calls.append(("display", content))
        return Handle()

    notebook = NotebookDisplay(display=display, html=lambda text: text)
    notebook.show([first])
    notebook.show([last])
    assert [kind for kind, _ in calls] == ["display", "update"]
    assert "1/4" in calls[0][1] and "4/4" in calls[1][1] and "class='asyncbatch-progress'" in calls[1][1]
    assert auto_display(io.StringIO()) is None  # not a terminal, not a notebook: quiet


async def test_follow_draws_until_the_job_ends_and_run_shows_progress(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(complete_after=0.3), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider, poll_interval=0.02, max_poll_interval=0.1) as bm:
            job = await bm.submit([chat_line(f"r{i}") for i in range(5)])
            out = io.StringIO()
            async with anyio.create_task_group() as tg:
                tg.start_soon(bm.wait, job.id)
                with anyio.fail_after(30):
                    final = await follow(bm.store, [job.id], TerminalDisplay(out), interval=0.02)
            second = await bm.submit([chat_line(f"s{i}") for i in range(3)])
        env = {**os.environ, "OPENAI_API_KEY": API_KEY}
        with anyio.fail_after(60):
            run = await anyio.run_process([sys.executable, "-m", "asyncbatch", "run", second.id, "--db", str(db),
                                           "--poll-interval", "0.05", "--progress"], env=env)
            third = await bm_submit(db, emu, [chat_line("t")])
            quiet = await anyio.run_process([sys.executable, "-m", "asyncbatch", "run", "--db", str(db),
                                             "--poll-interval", "0.05"], env=env)
    assert final[0].status == "done" and final[0].done == 5 and "5/5" in out.getvalue()
    assert b"3/3" in run.stderr and b"batches: 1 completed" in run.stderr and f"{second.id} done" in run.stdout.decode()
    assert f"{third} done" in quiet.stdout.decode() and quiet.stderr == b""  # not a terminal: no progress


async def bm_submit(db: Path, emu: Any, lines: list[dict[str, Any]]) -> str:
    provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
    async with BatchManager(db, provider=provider) as bm:
        return (await bm.submit(lines)).id


# --- exactly-once consumption ----------------------------------------------------------------------------

WORKER = """
import sqlite3, sys, anyio
from asyncbatch import BatchManager

async def main(db, job_id, sink_path):
    sink = sqlite3.connect(sink_path)
    sink.execute("CREATE TABLE IF NOT EXISTS seen (custom_id TEXT PRIMARY KEY, times INTEGER)")
    async with BatchManager(db) as bm:
        batch = []
        async for result in bm.results(job_id, unconsumed=True):
            batch.append(result)
            if len(batch) == 7:
                await process(bm, sink, job_id, batch)
                batch = []
        await process(bm, sink, job_id, batch)

async def process(bm, sink, job_id, batch):
    with sink:  # the worker's own transaction: upsert, so a result seen again after a kill counts once
        for r in batch:
            sink.execute("INSERT INTO seen VALUES (?, 1) ON CONFLICT(custom_id) DO UPDATE SET times = times + 1",
                         (r.custom_id,))
    await bm.acknowledge(job_id, [r.custom_id for r in batch])
    await anyio.sleep(0.05)

anyio.run(main, *sys.argv[1:])
"""


async def test_a_killed_ingestion_worker_processes_every_result_once_after_restart(tmp_path: Path) -> None:
    db, sink = tmp_path / "jobs.db", tmp_path / "sink.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider, poll_interval=0.02, max_poll_interval=0.1) as bm:
            job = await bm.wait((await bm.submit([chat_line(f"r{i:03d}") for i in range(300)])).id)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, str(script), str(db), job.id, str(sink)]
    kills = 0
    root = Path(__file__).parents[2]
    for delay in (0.9, 1.0, 1.1):  # kill -9 at three points while it works
        async with await anyio.open_process(command, cwd=root) as proc:
            await anyio.sleep(delay)
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.wait()
    with anyio.fail_after(60):
        await anyio.run_process(command, cwd=root)  # the last one finishes
    with sqlite3.connect(sink) as conn:
        seen = dict(conn.execute("SELECT custom_id, times FROM seen").fetchall())
    with sqlite3.connect(db) as conn:
        unconsumed = conn.execute("SELECT COUNT(*) FROM requests WHERE job_id = ? AND consumed = 0",
                                  (job.id,)).fetchone()[0]
    assert kills >= 1 and sorted(seen) == [f"r{i:03d}" for i in range(300)] and unconsumed == 0
    # a result is delivered again only if the kill fell between the sink's commit and the acknowledgement
    assert sum(times - 1 for times in seen.values()) <= 7 * kills


def test_amounts_are_exact_to_the_prices_precision_without_decimal_noise() -> None:
    """Pricing a group at its mean usage divides by its size: 1001.33... tokens left noise in the 28th digit."""
    from genai_prices import Usage as PriceUsage
    from genai_prices import calc_price

    usages = [(1000, 7), (1001, 9), (1003, 11)]
    report = price_results("job", "openai", [billed(f"r{i}", "gpt-4o-mini", *u) for i, u in enumerate(usages)],
                           when=NOW)
    exact = sum(calc_price(PriceUsage(input_tokens=i, output_tokens=o), "gpt-4o-mini", provider_id="openai",
                           genai_request_timestamp=NOW).total_price for i, o in usages)
    (model,) = report.models
    assert model.live_cost is not None and str(model.live_cost) == str(exact.quantize(model.live_cost))
    assert model.live_cost == exact and report.live_cost == exact
    assert -int(model.live_cost.as_tuple().exponent) <= 9  # its cheapest price, $0.075 per MTok: 9 places
    assert "0000000" not in report.summary() and "0000000" not in str(report.batch_cost)


def test_unknown_models_names_what_the_price_data_does_not_know() -> None:
    from asyncbatch.cost import unknown_models

    pairs = [("openai", "gpt-4o-minni"), ("openai", "gpt-4o-mini"), ("openai", "gpt-4o-minni"),
             ("anthropic", "claude-sonnet-4-5"), ("groq", "my-finetune-7b"), ("myhost", "gpt-4o")]
    assert unknown_models(pairs) == [("openai", "gpt-4o-minni"), ("groq", "my-finetune-7b")]


async def test_submit_warns_once_per_model_the_price_data_does_not_know(tmp_path: Path) -> None:
    from tests.engine.test_crash import cli
    from tests.helpers import write_jsonl

    lines = [chat_line(f"r{i}", model="gpt-4o-minni") for i in range(3)] + [chat_line("ok", model="gpt-4o-mini")]
    code, out, err = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db",
                               str(tmp_path / "jobs.db"))
    assert code == 0 and out.startswith("job_")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'gpt-4o-minni'" in warnings[0] and "unknown to the price data" in warnings[0]


def test_configure_is_exported() -> None:
    import asyncbatch
    from asyncbatch import configure

    assert configure is asyncbatch.litellm.configure and "configure" in asyncbatch.__all__
