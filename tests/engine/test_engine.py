"""The engine end to end against the emulator over loopback, with a real SQLite file."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from asyncbatch import AsyncBatchError, BatchManager, Job, JobStatus, RequestState
from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.events import BatchStatusChanged
from asyncbatch.export import write_results
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, integrity, verify_exactly_once, write_jsonl

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)


def provider(emu: Any) -> OpenAIProvider:
    return OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url, retry=FAST_RETRY)


def manager(db: Path | str, emu: Any, **options: Any) -> BatchManager:
    options.setdefault("poll_interval", 0.02)
    options.setdefault("max_poll_interval", 0.1)
    return BatchManager(db, provider=provider(emu), **options)


async def run_job(
    db: Path | str, emu: Any, lines: list[dict[str, Any]], *, max_attempts: int = 3, **options: Any
) -> Any:
    async with manager(db, emu, **options) as bm:
        job = await bm.submit(lines, max_attempts=max_attempts)
        with anyio.fail_after(60):
            job = await bm.wait(job.id)
        results = {r.custom_id: r async for r in bm.results(job.id)}
        shards = await bm.shards(job.id)
    return job, results, shards


async def test_happy_path_every_result_once_with_body_and_usage(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"row-{i}", f"classify item {i}") for i in range(50)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        job, results, shards = await run_job(db_url, emu, lines)
        ledger = emu.ledger
    assert job.status is JobStatus.DONE
    assert job.counts.completed == 50 and job.counts.failed == 0 and job.counts.total == 50
    assert set(results) == {f"row-{i}" for i in range(50)}
    r = results["row-7"]
    assert r.ok and r.attempt == 1 and r.status_code == 200
    assert r.body["object"] == "chat.completion" and r.text
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.batch_id == shards[0].batch_id
    assert len(shards) == 1 and shards[0].batch_status == "completed"
    assert verify_exactly_once(db_url, ledger, job.id, expect_all_succeeded=True)


async def test_mixed_models_and_endpoints_become_one_batch_each(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"a{i}", model="gpt-5.4-mini") for i in range(5)]
    lines += [chat_line(f"b{i}", model="gpt-5.4-nano") for i in range(4)]
    lines += [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(3)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        job, results, shards = await run_job(db_url, emu, lines)
        created = emu.ledger.batches_created()
    assert job.counts.completed == 12
    assert sorted((s.endpoint, s.model, s.request_count) for s in shards) == [
        ("/v1/chat/completions", "gpt-5.4-mini", 5),
        ("/v1/chat/completions", "gpt-5.4-nano", 4),
        ("/v1/embeddings", "text-embedding-3-small", 3),
    ]
    assert sorted(b.endpoint for b in created) == ["/v1/chat/completions"] * 2 + ["/v1/embeddings"]
    assert isinstance(results["e1"].body["data"][0]["embedding"], list)


async def test_limits_split_a_job_into_several_batches(tmp_path: Path) -> None:
    lines = [chat_line(f"r{i:03d}", "x" * 50) for i in range(30)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        job, _, shards = await run_job(tmp_path / "a.db", emu, lines, max_requests_per_batch=7)
        assert [s.request_count for s in shards] == [7, 7, 7, 7, 2]
        one_size = shards[0].bytes // 7
        job2, _, shards2 = await run_job(tmp_path / "b.db", emu, lines, max_bytes_per_batch=one_size * 10)
    assert job.counts.completed == 30 and job2.counts.completed == 30
    assert all(s.bytes <= one_size * 10 for s in shards2) and len(shards2) == 3


async def test_retryable_failures_are_resubmitted_until_they_succeed(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}") for i in range(20)]
    async with run_emulator(EmulatorConfig(fail_attempts=2), data_dir=tmp_path / "emu") as emu:
        job, results, shards = await run_job(db_url, emu, lines, max_attempts=3)
        ledger = emu.ledger
        assert all(ledger.submissions(f"r{i}") == 3 and ledger.billed_count(f"r{i}") == 1 for i in range(20))
    assert job.counts.completed == 20
    assert {r.attempt for r in results.values()} == {3}
    assert sorted(s.attempt for s in shards) == [1, 2, 3]
    verify_exactly_once(db_url, ledger, job.id, expect_all_succeeded=True)


async def test_retryable_failures_stop_at_max_attempts_and_keep_the_error(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}") for i in range(5)]
    async with run_emulator(EmulatorConfig(fail_attempts=5), data_dir=tmp_path / "emu") as emu:
        job, results, _ = await run_job(db_url, emu, lines, max_attempts=2)
        assert emu.ledger.submissions("r0") == 2
    assert job.status is JobStatus.DONE and job.counts.failed == 5
    r = results["r0"]
    assert r.status is RequestState.FAILED and r.attempt == 2 and r.status_code == 500
    assert r.error is not None and r.error.message


async def test_permanent_failures_are_not_retried(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line("good"), chat_line("bad", "please [[fail:400]]")]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        _, results, _ = await run_job(db_url, emu, lines, max_attempts=3)
        assert emu.ledger.submissions("bad") == 1
    assert results["good"].ok
    bad = results["bad"]
    assert bad.status is RequestState.FAILED and bad.attempt == 1 and bad.status_code == 400
    assert bad.body["error"]["type"] == "invalid_request_error"


async def test_expired_batch_requests_are_resubmitted(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}") for i in range(40)]
    config = EmulatorConfig(expire_batches=[1], expire_done_fraction=0.5)
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        job, results, shards = await run_job(db_url, emu, lines)
        ledger = emu.ledger
    assert shards[0].batch_status == "expired"
    assert job.counts.completed == 40
    attempts = Counter(r.attempt for r in results.values())
    assert attempts[1] > 0 and attempts[2] > 0 and attempts[1] + attempts[2] == 40
    verify_exactly_once(db_url, ledger, job.id, expect_all_succeeded=True)


async def test_cancel_stops_the_job_and_keeps_the_store_consistent(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}") for i in range(10)]
    async with run_emulator(EmulatorConfig(complete_after=30), data_dir=tmp_path / "emu") as emu:
        async with manager(db_url, emu) as bm:
            job = await bm.submit(lines)
            async with anyio.create_task_group() as tg:
                tg.start_soon(bm.wait, job.id)
                async for event in bm.watch(job.id):
                    if type(event).__name__ == "BatchCreated":
                        break
                await bm.cancel(job.id)
            job = await bm.status(job.id)
            shards = await bm.shards(job.id)
        ledger = emu.ledger
    assert job.status is JobStatus.CANCELLED and job.counts.cancelled == 10
    assert shards[0].batch_status == "cancelled"
    assert ledger.totals().billed == 0
    verify_exactly_once(db_url, ledger, job.id)


async def test_429_and_5xx_storms_and_dropped_connections_are_survived(tmp_path: Path, db_url: str) -> None:
    storm = FaultSpec(rate_429=0.25, rate_500=0.1, rate_503=0.1, drop_rate=0.1, retry_after=0.01)
    lines = [chat_line(f"r{i}") for i in range(30)]
    async with run_emulator(EmulatorConfig(faults={"*": storm}, seed=3), data_dir=tmp_path / "emu") as emu:
        job, _, _ = await run_job(db_url, emu, lines, max_requests_per_batch=10)
        ledger = emu.ledger
        assert sum(ledger.totals().faults.values()) > 5  # the storm really happened
    assert job.counts.completed == 30
    verify_exactly_once(db_url, ledger, job.id, expect_all_succeeded=True)


async def test_truncated_downloads_are_retried_to_a_complete_result(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}", "long text " * 20) for i in range(200)]
    config = EmulatorConfig(faults={"files_content": FaultSpec(truncate_rate=1.0, max_faults=2)})
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        job, results, _ = await run_job(db_url, emu, lines)
        assert emu.ledger.totals().faults.get("truncate", 0) >= 1
    assert job.counts.completed == 200 and len(results) == 200


async def test_a_create_whose_answer_was_lost_is_adopted_not_repeated(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}") for i in range(10)]
    config = EmulatorConfig(faults={"batches_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)})
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        job, _, shards = await run_job(db_url, emu, lines)
        created = emu.ledger.batches_created()
        ledger = emu.ledger
    assert len(created) == 1 and shards[0].batch_id == created[0].id
    verify_exactly_once(db_url, ledger, job.id, expect_all_succeeded=True)


async def test_results_export_in_openai_output_format(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line("ok"), chat_line("bad", "[[fail:400]]")]
    db = db_url
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(db, emu) as bm:
        job = await bm.submit(lines)
        await bm.wait(job.id)
        count = await write_results(bm, job.id, tmp_path / "out.jsonl")
    out = {d["custom_id"]: d for d in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert count == 2 and set(out) == {"ok", "bad"}
    assert out["ok"]["response"]["status_code"] == 200 and out["ok"]["error"] is None
    assert out["ok"]["response"]["body"]["choices"][0]["message"]["content"]
    assert out["bad"]["response"]["status_code"] == 400


async def test_store_never_holds_the_api_key(tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        await run_job(tmp_path / "jobs.db", emu, [chat_line("a")])
    for path in tmp_path.rglob("*"):
        if path.is_file() and "emu" not in path.parts:
            assert API_KEY.encode() not in path.read_bytes(), path
    assert integrity(tmp_path / "jobs.db") == "ok"
    assert (tmp_path / "jobs.db").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("max_attempts", [0, 51])
async def test_max_attempts_is_bounded(tmp_path: Path, max_attempts: int) -> None:
    from asyncbatch import ValidationError

    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(tmp_path / "j.db", emu) as bm:
        with pytest.raises(ValidationError):
            await bm.submit([chat_line("a")], max_attempts=max_attempts)


async def test_job_cost_is_priced_from_the_store(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}", "price me " * 30, model="gpt-4o-mini") for i in range(5)]
    lines.append(chat_line("x", model="no-such-model-anywhere"))
    db = db_url
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(db, emu) as bm:
        job = await bm.submit(lines)
        job = await bm.wait(job.id)
        report = await job.cost()
        assert report == await bm.cost(job.id)
    detached = msgspec.convert(msgspec.to_builtins(job), Job)
    with pytest.raises(AsyncBatchError, match="not read through a BatchManager"):
        await detached.cost()
    assert report.unpriced_requests == 1
    assert 0 < report.batch_cost < report.live_cost


async def test_raw_bodies_are_the_stored_json_and_decode_to_the_same_results(tmp_path: Path, db_url: str) -> None:
    lines = [chat_line(f"r{i}", f"text {i}") for i in range(5)] + [chat_line("bad", "[[fail:400]]")]
    db = db_url
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu, manager(db, emu) as bm:
        job = await bm.submit(lines)
        await bm.wait(job.id)
        decoded = {r.custom_id: r async for r in bm.results(job.id)}
        raw = {r.custom_id: r async for r in bm.results(job.id, raw_bodies=True)}
        attempts = [r async for r in bm.results(job.id, all_attempts=True, raw_bodies=True)]
    assert set(raw) == set(decoded) and len(attempts) == 6
    for custom_id, result in raw.items():
        assert isinstance(result.body, msgspec.Raw)
        assert msgspec.json.decode(result.body) == decoded[custom_id].body
        assert msgspec.structs.replace(result, body=decoded[custom_id].body) == decoded[custom_id]


async def test_counts_that_move_do_not_reset_the_poll_backoff(tmp_path: Path) -> None:
    """A running batch's request counts move at every poll; only a new status polls soon again. Seen through
    the manager's own events: one per poll that saw a change."""
    lines = [chat_line(f"r{i}", "hello") for i in range(400)]
    async with (
        run_emulator(EmulatorConfig(complete_after=4.0), data_dir=tmp_path / "emu") as emu,
        manager(tmp_path / "jobs.db", emu, poll_interval=0.1, max_poll_interval=2.0) as bm,
    ):
        job = await bm.submit(lines)
        seen: list[tuple[float, str, int]] = []
        async with anyio.create_task_group() as tg, bm.events.subscribe(job.id) as events:

            async def record() -> None:
                async for event in events:
                    if isinstance(event, BatchStatusChanged):
                        seen.append((anyio.current_time(), event.status.value, event.counts["completed"]))

            tg.start_soon(record)
            with anyio.fail_after(30):
                await bm.wait(job.id)
            tg.cancel_scope.cancel()
    running = [(at, done) for at, status, done in seen if status == "in_progress"]
    assert len({done for _, done in running}) >= 4, running  # the counts did move from poll to poll
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(running)]
    assert len(running) <= 12 and max(gaps) > 0.6, gaps  # every 0.1 s for 4 s would be about 40 polls


async def test_a_job_sent_to_a_wrong_base_url_is_repointed_and_runs(tmp_path: Path) -> None:
    """A base URL without /v1 answers 404 at its root; `run --base-url` (repoint) sends the job to the right one,
    though the job recorded the wrong one at submit."""
    from tests.reliability.support import cli, cli_env

    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        db, lines = tmp_path / "jobs.db", write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(4)])
        wrong = emu.openai_base_url.removesuffix("/v1")
        done = await cli("submit", str(lines), "--db", str(db), "--base-url", wrong)
        job_id = done.out.split()[-1]
        done = await cli("run", "--db", str(db), "--poll-interval", "0.05", job_id)
        assert done.code != 0 and "404" in done.err and "has no /v1" in done.err and "left resumable" in done.err
        done = await cli("run", "--db", str(db), "--poll-interval", "0.05", "--base-url", emu.openai_base_url, job_id,
                         env=cli_env())
        assert done.code == 0 and f"{job_id} done: 4 succeeded" in done.out, done.err
        verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


async def test_nothing_listening_is_said_in_one_line_within_seconds_and_run_gives_up_resumable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from asyncbatch.errors import ConnectionFailedError

    url = f"http://127.0.0.1:{closed_port()}/v1"
    provider = OpenAIProvider(api_key=API_KEY, base_url=url, retry=RetryPolicy(base_delay=0.05, max_delay=0.1))
    async with BatchManager(tmp_path / "jobs.db", provider=provider, poll_interval=0.05, give_up_after=1.0) as bm:
        job = await bm.submit([chat_line("a")])
        with anyio.fail_after(20), pytest.raises(ConnectionFailedError) as info:
            await bm.wait(job.id)
        shard = (await bm.shards(job.id))[0]
        assert (await bm.status(job.id)).status is JobStatus.RUNNING  # left resumable
    message = str(info.value)
    assert f"POST /files: cannot reach {url.removesuffix('/v1')}/…" in message and "ClientConnectorError" in message
    assert "left resumable" in "".join(info.value.__notes__)
    assert shard.last_error is not None and "cannot reach" in shard.last_error  # what `status` shows meanwhile
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "cannot reach" in r.getMessage()]
    assert warnings and all("\n" not in w and len(w) < 400 for w in warnings)


async def test_a_wait_the_server_asked_for_shows_on_the_shard_while_it_lasts(tmp_path: Path) -> None:
    """A 429 with Retry-After: while the HTTP layer waits, the shard says so (a progress line shows "waiting:"),
    and the note is gone once the call went through."""
    storm = FaultSpec(rate_429=1.0, retry_after=1.5, max_faults=1)
    async with run_emulator(EmulatorConfig(faults={"files_upload": storm}), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(tmp_path / "jobs.db", provider=provider, poll_interval=0.05) as bm:
            job = await bm.submit([chat_line("a")])
            notes: list[str | None] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(bm.wait, job.id)
                with anyio.fail_after(10):
                    while not notes or notes[-1] is None or "429" not in (notes[-1] or ""):
                        shards = await bm.shards(job.id)
                        notes.append(shards[0].last_error if shards else None)
                        await anyio.sleep(0.05)
            shard = (await bm.shards(job.id))[0]
    assert "HTTP 429 (retry-after" in (notes[-1] or "") and "trying again in 2s" in (notes[-1] or "")
    assert shard.last_error is None and shard.phase.value == "ingested"


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_batches_in_flight_are_polled_from_list_pages(tmp_path: Path, kind: str) -> None:
    """30 batches in flight: their statuses come from the listing, a page for all of them, where each used to be
    polled many times. OpenAI's and Anthropic's pages hold whole batches (output files included), so none is read
    alone; Gemini's are not known to carry the output, so each batch is read alone once when it ended (and once more
    for its inline responses, by ``results``)."""
    from asyncbatch.providers.anthropic import AnthropicProvider
    from asyncbatch.providers.gemini import GeminiProvider

    model = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}[kind]
    lines = [chat_line(f"r{i}", model=model) for i in range(30)]
    async with run_emulator(EmulatorConfig(complete_after=1.5), data_dir=tmp_path / "emu") as emu:
        source = {
            "openai": lambda: provider(emu),
            "anthropic": lambda: AnthropicProvider(api_key=API_KEY, base_url=emu.anthropic_base_url,
                                                   retry=FAST_RETRY),
            "gemini": lambda: GeminiProvider(api_key=API_KEY, base_url=emu.gemini_base_url, retry=FAST_RETRY),
        }[kind]()
        async with BatchManager(tmp_path / "jobs.db", provider=source, poll_interval=0.05, max_poll_interval=0.2,
                                max_requests_per_batch=1) as bm:
            job = await bm.submit(lines)
            with anyio.fail_after(60):
                job = await bm.wait(job.id)
        calls = emu.ledger.calls
    assert job.status is JobStatus.DONE and job.counts.completed == 30
    one, listing, alone = {
        "openai": ("GET /v1/batches/{batch_id}", "GET /v1/batches", 0),
        "anthropic": ("GET /v1/messages/batches/{batch_id}", "GET /v1/messages/batches", 0),
        "gemini": ("GET /gemini/v1/batches/{batch_id:[^/:]+}", "GET /gemini/v1/batches", 60),
    }[kind]
    assert calls.get(one, 0) == alone, calls
    assert 0 < calls[listing] < 1.5 / 0.05  # fewer than one poll of one batch at the shortest interval would make


async def test_retries_of_many_batches_go_back_in_one_batch(tmp_path: Path) -> None:
    """One failure in each of 10 batches of 5: held while other batches are out (retry_window), then sent again
    together (a full batch of them at once, or with first attempts not yet planned) as soon as nothing else can
    come back: at most two batches that carry retries are not full, not 10 batches of one, and no wait for the
    window once the last batch is in (it is 60 s here; the job ends well within that)."""
    lines = [chat_line(f"r{i}", "[[fail_attempts:1]]" if i % 5 == 0 else "hello") for i in range(50)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        with anyio.fail_after(30):
            job, results, shards = await run_job(tmp_path / "jobs.db", emu, lines, max_requests_per_batch=5,
                                                 retry_window=60.0)
    assert job.status is JobStatus.DONE and job.counts.completed == 50
    again = [s for s in shards if s.attempt > 1]
    # retries ride in full batches (of retries, or with first attempts not yet planned): at most two are not full
    # (the last, and at times one sent in a moment when no other batch of the job had a task), where sending each
    # batch's failure as it came back makes up to 10 batches of one
    assert sum(s.request_count < 5 for s in again) <= 2 and sum(s.request_count for s in again) >= 10
    assert all(results[f"r{i}"].attempt == 2 for i in range(0, 50, 5))
