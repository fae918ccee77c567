"""Injected faults: what the official SDKs (and our HttpClient) see, and what the emulator did meanwhile."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from asyncbatch.emulator import Emulator, EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.errors import ConnectionFailedError
from asyncbatch.http import HttpClient, RetryPolicy

from .conftest import KEY
from .support import anthropic_item, chat_line, upload

ANTHROPIC_HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def kinds(emu: Emulator) -> list[str]:
    return [f.kind for f in emu.ledger.faults]


async def test_openai_sdk_retries_429_and_succeeds(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.faults = {"files_read": FaultSpec(rate_429=1.0, retry_after=0.01, max_faults=2)}
    files = await oai.with_options(max_retries=2).files.list()
    assert files.data == []
    assert kinds(emu) == ["429", "429"]


async def test_429_envelope_and_headers(emu: Emulator) -> None:
    emu.config.faults = {"*": FaultSpec(rate_429=1.0, retry_after=1.5)}
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"}) as session:
        async with session.get(emu.openai_base_url + "/batches") as response:
            assert response.status == 429
            assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("1.5", "1500")
            assert response.headers["x-request-id"].startswith("req_")
            assert response.headers["x-should-retry"] == "true"
            error = (await response.json())["error"]
            assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        async with session.get(emu.url + "/v1/messages/batches", headers=ANTHROPIC_HEADERS) as response:
            assert response.status == 429 and response.headers["retry-after"] == "1.5"
            body = await response.json()
            assert body["error"]["type"] == "rate_limit_error" and body["request_id"] == response.headers["request-id"]


async def test_anthropic_sdk_retries_429_and_succeeds(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.faults = {"anthropic_create": FaultSpec(rate_429=1.0, retry_after=0.01, max_faults=1)}
    batch = await ant.with_options(max_retries=1).messages.batches.create(
        requests=[anthropic_item("a")])
    assert batch.processing_status == "in_progress"
    assert kinds(emu) == ["429"] and len(emu.ledger.batches_created()) == 1


async def test_5xx_are_typed_and_create_nothing(emu: Emulator, oai: AsyncOpenAI, ant: AsyncAnthropic) -> None:
    source = await upload(oai, [chat_line("a")])
    emu.config.faults = {"batches_create": FaultSpec(rate_500=1.0), "anthropic_create": FaultSpec(rate_503=1.0)}
    with pytest.raises(openai.InternalServerError) as caught:
        await oai.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert caught.value.status_code == 500 and caught.value.body["type"] == "server_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as failed:
        await ant.messages.batches.create(requests=[])
    assert failed.value.status_code == 503
    assert emu.ledger.batches_created() == []


async def test_dropped_connection(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.faults = {"files_upload": FaultSpec(drop_rate=1.0, max_faults=1)}
    with pytest.raises(openai.APIConnectionError):
        await upload(oai, [chat_line("a")])
    assert emu.ledger.files == []  # dropped before the handler ran
    assert (await upload(oai, [chat_line("a")])).purpose == "batch"
    assert kinds(emu) == ["drop"]


async def test_sdk_retries_a_dropped_connection(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.faults = {"batches_read": FaultSpec(drop_rate=1.0, max_faults=1)}
    page = await oai.with_options(max_retries=1).batches.list()
    assert page.data == [] and kinds(emu) == ["drop"]


async def test_drop_after_create_leaves_a_batch_the_client_does_not_know(
    emu: Emulator, oai: AsyncOpenAI, ant: AsyncAnthropic
) -> None:
    source = await upload(oai, [chat_line("a")])
    emu.config.faults = {"batches_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1),
                         "anthropic_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)}
    with pytest.raises(openai.APIConnectionError):
        await oai.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"token": "t-42"})
    [lost] = [b async for b in oai.batches.list()]
    assert lost.metadata == {"token": "t-42"}  # findable by its token, as a careful client would
    with pytest.raises(anthropic.APIConnectionError):
        await ant.messages.batches.create(requests=[anthropic_item("a")])
    assert [b.provider for b in emu.ledger.batches_created()] == ["openai", "anthropic"]
    assert kinds(emu) == ["drop_after_create", "drop_after_create"]


async def test_sdk_retry_after_a_drop_after_create_duplicates_the_batch(emu: Emulator, oai: AsyncOpenAI) -> None:
    source = await upload(oai, [chat_line("a")])
    emu.config.faults = {"batches_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)}
    await oai.with_options(max_retries=1).batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert len(emu.ledger.batches_created()) == 2  # no idempotency key: why the engine reconciles by token


async def test_truncated_downloads(emu: Emulator, oai: AsyncOpenAI) -> None:
    source = await upload(oai, [chat_line(f"r{i}", "z" * 100) for i in range(50)])
    emu.config.faults = {"files_content": FaultSpec(truncate_rate=1.0, max_faults=1)}
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"}) as session:
        received = 0
        with pytest.raises(aiohttp.ClientPayloadError):  # its wording varies across aiohttp versions
            async with session.get(f"{emu.openai_base_url}/files/{source.id}/content") as response:
                assert response.content_length == source.bytes
                async for chunk in response.content.iter_any():
                    received += len(chunk)
        assert received == source.bytes // 2
    emu.config.faults = {"files_content": FaultSpec(truncate_rate=1.0, max_faults=2)}
    client = HttpClient(emu.openai_base_url, headers={"authorization": f"Bearer {KEY}"}, secrets=[KEY],
                        retry=RetryPolicy(base_delay=0.01, max_delay=0.02))
    try:  # our streaming client yields whole lines only, then says the body was cut
        received: list[bytes] = []
        with pytest.raises(ConnectionFailedError, match="content"):
            async for _, line in client.lines(f"/files/{source.id}/content"):
                received.append(line)
        assert 0 < len(received) < 50 and all(line.startswith(b"{") and line.endswith(b"}") for line in received)
        whole = [line async for _, line in client.lines(f"/files/{source.id}/content")]  # fault budget spent
    finally:
        await client.aclose()
    assert len(whole) == 50 and whole[: len(received)] == received
    assert kinds(emu) == ["truncate", "truncate"]


async def test_truncated_anthropic_results(emu: Emulator, ant: AsyncAnthropic) -> None:
    created = await ant.messages.batches.create(
        requests=[anthropic_item(f"r{i}") for i in range(20)])
    batch = await ant.messages.batches.retrieve(created.id)
    emu.config.faults = {"anthropic_results": FaultSpec(truncate_rate=1.0)}
    async with aiohttp.ClientSession(headers=ANTHROPIC_HEADERS) as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(str(batch.results_url)) as response:
                await response.read()
    assert kinds(emu) == ["truncate"]


async def test_fault_draws_are_seeded(tmp_path: Path) -> None:
    async def statuses(seed: int) -> list[int]:
        config = EmulatorConfig(seed=seed, faults={"*": FaultSpec(rate_500=0.5)})
        async with run_emulator(config, data_dir=tmp_path / str(seed)) as emu, aiohttp.ClientSession(
                headers={"authorization": f"Bearer {KEY}"}) as session:
            found = []
            for _ in range(24):
                async with session.get(emu.openai_base_url + "/files") as response:
                    found.append(response.status)
            return found

    first = await statuses(1)
    assert first == await statuses(1)
    assert first != await statuses(2)
    assert {200, 500} == set(first)
