"""Deterministic outcomes and the ledger: submissions counted per identity, billing, reproducible draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from asyncbatch.emulator import Emulator, EmulatorConfig, anthropic_identity, run_emulator
from asyncbatch.emulator.ledger import LedgerSnapshot
from asyncbatch.model import Outcome

from .conftest import KEY
from .support import anthropic_item, chat_line, parse_lines, upload


async def run_openai(client: AsyncOpenAI, lines: list[dict[str, Any]]) -> dict[str, int]:
    """Run one batch to its end; the HTTP status of each custom_id's result."""
    source = await upload(client, lines)
    created = await client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
    batch = await client.batches.retrieve(created.id)
    found: dict[str, int] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in parse_lines((await client.files.content(file_id)).text):
                found[line["custom_id"]] = line["response"]["status_code"] if line["response"] else 0
    return found


async def test_fail_attempts_marker_counts_openai_submissions_by_custom_id(emu: Emulator, oai: AsyncOpenAI) -> None:
    line = chat_line("flaky", "try me [[fail_attempts:2]]")
    statuses = [(await run_openai(oai, [line, chat_line(f"steady-{i}")]))["flaky"] for i in range(3)]
    assert statuses == [500, 500, 200]
    records = emu.ledger.requests_for("flaky")
    assert [(r.submission, r.outcome, r.billed) for r in records] == [
        (1, Outcome.ERRORED, False), (2, Outcome.ERRORED, False), (3, Outcome.SUCCEEDED, True)]
    assert emu.ledger.submissions("flaky") == 3 and emu.ledger.billed_count("flaky") == 1
    assert emu.ledger.billed_count("steady-0") == 1


async def test_global_fail_attempts(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.fail_attempts = 1
    assert await run_openai(oai, [chat_line("a"), chat_line("b")]) == {"a": 500, "b": 500}
    assert await run_openai(oai, [chat_line("a"), chat_line("b")]) == {"a": 200, "b": 200}


async def test_anthropic_submissions_are_counted_by_params(emu: Emulator, ant: AsyncAnthropic) -> None:
    params: Any = {"model": "claude-haiku-4-5", "max_tokens": 20,
                   "messages": [{"role": "user", "content": "flaky [[fail_attempts:1]]"}]}
    types = []
    for attempt in (1, 2):  # a client sends a new provider-side id per attempt
        created = await ant.messages.batches.create(requests=[{"custom_id": f"job-{attempt}", "params": params}])
        await ant.messages.batches.retrieve(created.id)
        [result] = [r async for r in await ant.messages.batches.results(created.id)]
        types.append(result.result.type)
    assert types == ["errored", "succeeded"]
    identity = anthropic_identity(params)
    assert emu.ledger.submissions(identity) == 2 and emu.ledger.billed_count(identity) == 1
    assert [r.submission for r in emu.ledger.requests_for(identity)] == [1, 2]
    assert emu.ledger.submissions("job-1") == 1
    assert anthropic_identity(dict(reversed(params.items()))) == identity  # key order does not matter


async def test_rates_are_reproducible_and_redrawn_on_retry(tmp_path: Path) -> None:
    lines = [chat_line(f"r{i}") for i in range(40)]

    async def outcomes(seed: int, rounds: int = 1) -> list[dict[str, int]]:
        config = EmulatorConfig(seed=seed, fail_rate=0.5, fail_status=503)
        async with run_emulator(config, data_dir=tmp_path / f"{seed}-{rounds}") as emu, AsyncOpenAI(
                base_url=emu.openai_base_url, api_key=KEY, max_retries=0) as client:
            return [await run_openai(client, lines) for _ in range(rounds)]

    [first] = await outcomes(7)
    assert set(first.values()) == {200, 503}
    assert [first] == await outcomes(7)
    assert [first] != await outcomes(8)
    again = await outcomes(7, rounds=2)
    assert again[0] == first and again[1] != first  # the second submission of each id draws again


async def test_expire_rate_and_ledger_totals(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.expire_rate = 1.0
    created = await ant.messages.batches.create(
        requests=[anthropic_item(f"r{i}") for i in range(3)])
    batch = await ant.messages.batches.retrieve(created.id)
    assert batch.request_counts.expired == 3
    totals = emu.ledger.totals()
    assert (totals.batches, totals.requests, totals.billed, totals.outcomes) == (1, 3, 0, {"expired": 3})
    snapshot = msgspec.json.decode(emu.ledger.to_json(), type=LedgerSnapshot)
    assert [r.outcome for r in snapshot.requests] == [Outcome.EXPIRED] * 3
    assert snapshot.batches[0].status == "ended" and snapshot.batches[0].provider == "anthropic"


async def test_ledger_records_files_and_batches(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.expire_batches = [1]
    await run_openai(oai, [chat_line(f"r{i}") for i in range(4)])
    [upload_record, *outputs] = emu.ledger.files
    assert (upload_record.purpose, upload_record.lines) == ("batch", 4)
    assert sorted((f.purpose, f.lines) for f in outputs) == [("batch_output", 2), ("batch_output", 2)]
    [batch] = emu.ledger.batches_created("openai")
    assert (batch.ordinal, batch.request_count, batch.status, batch.endpoint) == (1, 4, "expired",
                                                                                   "/v1/chat/completions")
    assert emu.ledger.batches_created("anthropic") == []
    assert sum(r.billed for r in emu.ledger.requests) == 2
