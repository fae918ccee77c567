"""The engine on Gemini and Mistral: the same OpenAI-format lines, run through ``BatchManager(db,
provider=...)``, with the same durability (resubmission, expiry, SIGKILL at every failpoint, billed once)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager, JobStatus, RequestState
from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.export import write_results
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.base import Provider
from asyncbatch.providers.gemini import GeminiProvider
from asyncbatch.providers.mistral import MistralProvider
from tests.engine.test_crash import RUN, cli, cli_env
from tests.helpers import API_KEY, chat_line, verify_exactly_once

FAST_RETRY = RetryPolicy(base_delay=0.01, max_delay=0.05, max_retries=12)
MODELS = {"gemini": "gemini-2.5-flash", "mistral": "mistral-small-latest"}
KEY_ENV = {"gemini": "GEMINI_API_KEY", "mistral": "MISTRAL_API_KEY"}
ODD_IDS = ["with.dots.in.it", "x" * 300, "ünïcödé-id", 'quote"and space', "plain_ok-1"]


def provider(name: str, emu: Any, **options: Any) -> Provider:
    if name == "gemini":
        return GeminiProvider(api_key=API_KEY, base_url=emu.gemini_base_url, retry=FAST_RETRY, **options)
    return MistralProvider(api_key=API_KEY, base_url=emu.mistral_base_url, retry=FAST_RETRY, **options)


def manager(db: Path, made: Provider, **options: Any) -> BatchManager:
    return BatchManager(db, provider=made, poll_interval=0.02, max_poll_interval=0.1, **options)


def line(name: str, custom_id: str, text: str = "hello", **body: Any) -> dict[str, Any]:
    return chat_line(custom_id, text, model=MODELS[name], **body)


@pytest.mark.parametrize("name", ["gemini", "mistral"])
async def test_500_openai_lines_run_and_map_back_to_the_users_ids(tmp_path: Path, name: str) -> None:
    lines = [line(name, cid, f"question {i}") for i, cid in enumerate(ODD_IDS)]
    lines += [line(name, f"req-{i:04d}", f"item {i}") for i in range(500 - len(lines))]
    # Gemini: small shards go inline, the others through a file; Mistral: inline jobs up to 150 requests
    options = {"inline_max_bytes": 12_000} if name == "gemini" else {"inline_max_requests": 150}
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        async with manager(db, provider(name, emu, **options), max_requests_per_batch=200) as bm:
            job = await bm.wait((await bm.submit(lines)).id)
            results = {r.custom_id: r async for r in bm.results(job.id)}
            await write_results(bm, job.id, tmp_path / "openai.jsonl", fmt="openai")
            report = await bm.cost(job.id)
        ledger = emu.ledger
    assert job.status is JobStatus.DONE and job.counts.completed == 500 and set(results) == {
        line_["custom_id"] for line_ in lines}
    first = results["with.dots.in.it"]
    assert first.provider == name and first.ok and first.text and first.text.endswith("question 0")
    assert first.usage is not None and first.usage.input_tokens > 0 and first.model == MODELS[name]
    exported = [json.loads(x) for x in (tmp_path / "openai.jsonl").read_text().splitlines()]
    assert {e["custom_id"] for e in exported} == set(results)
    assert all(e["response"]["body"]["object"] == "chat.completion" for e in exported)
    assert [m.model for m in report.models] == [MODELS[name]] and report.unpriced_requests == 0
    assert report.batch_cost > 0 and report.batch_cost < report.live_cost
    assert len(ledger.batches_created(name)) == 3
    uploads = [f for f in ledger.files if f.purpose == "batch"]
    assert len(uploads) == 2  # the two shards of 200 went through files, the last 100 inline
    verify_exactly_once(db, ledger, job.id, expect_all_succeeded=True)


@pytest.mark.parametrize("name", ["gemini", "mistral"])
async def test_failed_requests_are_resubmitted_and_permanent_ones_kept(tmp_path: Path, name: str) -> None:
    lines = [line(name, f"retry{i}", f"q {i} [[fail_attempts:1]]") for i in range(4)]
    lines += [line(name, "bad", "[[fail:400]]"), line(name, "ok", "fine")]
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        async with manager(db, provider(name, emu)) as bm:
            job = await bm.wait((await bm.submit(lines, max_attempts=3)).id)
            results = {r.custom_id: r async for r in bm.results(job.id)}
        ledger = emu.ledger
    assert all(results[f"retry{i}"].ok and results[f"retry{i}"].attempt == 2 for i in range(4))
    bad = results["bad"]
    assert bad.status is RequestState.FAILED and bad.attempt == 1 and bad.status_code == 400
    verify_exactly_once(db, ledger, job.id)


@pytest.mark.parametrize("name", ["gemini", "mistral"])
async def test_an_expired_batch_is_resubmitted(tmp_path: Path, name: str) -> None:
    lines = [line(name, f"r{i}", f"q {i}") for i in range(20)]
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(expire_batches=[1]), data_dir=tmp_path / "emu") as emu:
        async with manager(db, provider(name, emu)) as bm:
            job = await bm.wait((await bm.submit(lines)).id)
            attempts = {r.custom_id: r.attempt async for r in bm.results(job.id)}
        ledger = emu.ledger
    first, *rest = ledger.batches_created(name)
    assert first.status in ("BATCH_STATE_EXPIRED", "TIMEOUT_EXCEEDED") and rest
    assert job.counts.completed == 20 and sorted(set(attempts.values())) == [1, 2]
    verify_exactly_once(db, ledger, job.id, expect_all_succeeded=True)


@pytest.mark.parametrize("name", ["gemini", "mistral"])
async def test_lost_create_replies_are_adopted_with_the_providers_clock_hours_off(tmp_path: Path, name: str) -> None:
    """Every create's reply is lost (the batch IS created); the provider's clock is five hours behind ours. The
    engine finds each batch by its token instead of creating a second one."""
    lines = [line(name, f"r{i}", f"q {i}") for i in range(30)]
    db = tmp_path / "jobs.db"
    config = EmulatorConfig(faults={f"{name}_create": FaultSpec(drop_after_create_rate=1.0)})
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        emu.clock.advance(-5 * 3600)
        async with manager(db, provider(name, emu), max_requests_per_batch=10) as bm:
            job = await bm.wait((await bm.submit(lines)).id)
        ledger = emu.ledger
    assert job.counts.completed == 30
    assert len(ledger.batches_created(name)) == 3 and [f.kind for f in ledger.faults] == ["drop_after_create"] * 3
    verify_exactly_once(db, ledger, job.id, expect_all_succeeded=True)


POINTS = ["after_upload", "before_create", "after_create", "during_poll", "mid_ingest", "before_finish",
          "after_resubmit_plan", "after_create:2", "mid_ingest:3"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemini", "mistral"])
async def test_sigkill_at_every_failpoint(tmp_path: Path, name: str) -> None:
    lines = [line(name, f"req.{i:04d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 5 == 0 else ""))
             for i in range(500)]
    db = tmp_path / "jobs.db"
    env = {KEY_ENV[name]: API_KEY}
    # half the shards inline, half through files: both paths are killed at every point (the retries go out as
    # they come back, in small batches that go inline, rather than gathered into large ones)
    options = {"inline_max_bytes": 10_000} if name == "gemini" else {"inline_max_requests": 100}
    run = (*RUN, "--retry-window", "0")
    async with run_emulator(EmulatorConfig(complete_after=0.3), data_dir=tmp_path / "emu") as emu:
        async with manager(db, provider(name, emu, **options)) as bm:  # the job records base URL and options
            job = await bm.submit(lines)
        for point in POINTS:
            code, _, err = await cli("run", "--db", str(db), *run, env=cli_env(ASYNCBATCH_FAILPOINTS=point, **env))
            assert code == -signal.SIGKILL, f"failpoint {point} was not reached (exit {code}): {err[-500:]}"
        with anyio.fail_after(120):
            code, out, err = await cli("run", "--db", str(db), *run, env=cli_env(**env))
        assert code == 0 and f"{job.id} done" in out, err
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
        batches = emu.ledger.batches_created(name)
        assert len(batches) > 5 and 0 < len([f for f in emu.ledger.files if f.purpose == "batch"]) < len(batches)


async def test_native_gemini_lines_in_a_file_run_beside_openai_lines(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemini's own batch lines (``{"key", "request"}``) in a JSONL file, in a job whose default provider is
    OpenAI: they go to Gemini (their model, or refused naming the field when they name none)."""
    from tests.helpers import write_jsonl

    native = [{"key": f"g{i}", "request": {"model": "models/gemini-2.5-flash",
                                           "contents": [{"role": "user", "parts": [{"text": f"native {i}"}]}]}}
              for i in range(3)]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        monkeypatch.setenv("GEMINI_BASE_URL", emu.gemini_base_url)
        monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
        from asyncbatch.providers.openai import OpenAIProvider

        openai = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(tmp_path / "jobs.db", provider=openai, poll_interval=0.02) as bm:
            source = write_jsonl(tmp_path / "in.jsonl", [*native, chat_line("o1")])
            job = await bm.wait((await bm.submit(source)).id)
            results = {r.custom_id: r async for r in bm.results(job.id)}
            bad = write_jsonl(tmp_path / "bad.jsonl", [{"key": "x", "request": {"contents": []}}])
            with pytest.raises(Exception, match="names no model") as info:
                await bm.submit(bad)
        verify_exactly_once(tmp_path / "jobs.db", emu.ledger, job.id, expect_all_succeeded=True)
    assert job.status is JobStatus.DONE and set(results) == {"g0", "g1", "g2", "o1"}
    assert results["g1"].provider == "gemini" and "native 1" in (results["g1"].text or "")
    assert results["o1"].provider == "openai"
    assert getattr(info.value, "line", None) == 1 and getattr(info.value, "field", None) == "request.model"
