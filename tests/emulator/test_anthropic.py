"""Anthropic Message Batches conformance, driven through the official ``anthropic`` SDK over loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request

from asyncbatch.emulator import Emulator, anthropic_identity

from .conftest import KEY
from .support import anthropic_item as item
from .support import conform


async def create_strict(client: AsyncAnthropic, requests: list[Request]) -> MessageBatch:
    raw = await client.messages.batches.with_raw_response.create(requests=requests)
    assert raw.http_response.headers["request-id"].startswith("req_")
    return conform(MessageBatch, raw.http_response.content)


async def retrieve_strict(client: AsyncAnthropic, batch_id: str) -> MessageBatch:
    raw = await client.messages.batches.with_raw_response.retrieve(batch_id)
    return conform(MessageBatch, raw.http_response.content)


async def results_strict(batch: MessageBatch) -> dict[str, MessageBatchIndividualResponse]:
    """Download ``results_url`` raw and validate every line against the SDK model, strictly."""
    assert batch.results_url is not None
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(batch.results_url) as response:
        assert response.status == 200
        lines = (await response.read()).splitlines()
    parsed = [conform(MessageBatchIndividualResponse, line) for line in lines]
    return {p.custom_id: p for p in parsed}


async def test_full_lifecycle(emu: Emulator, ant: AsyncAnthropic) -> None:
    requests = [item(f"row-{i}") for i in range(6)]
    requests[1] = item("row-1", "please [[fail:400]]")
    requests[2] = item("row-2", "please [[fail:529]]")
    requests[3] = item("row-3", stream=True)  # a params error only the asynchronous checks see
    requests[4] = item("row-4", "[[expire]]")
    created = await create_strict(ant, requests)
    assert created.id.startswith("msgbatch_") and created.processing_status == "in_progress"
    assert created.results_url is None and created.ended_at is None
    assert created.request_counts.processing == 6
    assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600

    batch = await retrieve_strict(ant, created.id)
    assert batch.processing_status == "ended" and batch.ended_at is not None
    counts = batch.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 2, 3, 0, 1)
    assert batch.results_url == f"{emu.url}/v1/messages/batches/{batch.id}/results"

    results = await results_strict(batch)
    assert set(results) == {f"row-{i}" for i in range(6)}
    succeeded = results["row-0"].result
    assert succeeded.type == "succeeded"
    assert succeeded.message.usage.service_tier == "batch"
    assert succeeded.message.content[0].type == "text" and succeeded.message.content[0].text
    assert succeeded.message.model == "claude-haiku-4-5"
    errored = {cid: results[cid].result for cid in ("row-1", "row-2", "row-3")}
    kinds = {cid: r.error.error.type for cid, r in errored.items() if r.type == "errored"}
    assert kinds == {"row-1": "invalid_request_error", "row-2": "overloaded_error", "row-3": "invalid_request_error"}
    assert results["row-4"].result.type == "expired"

    streamed = [r async for r in await ant.messages.batches.results(batch.id)]  # the SDK's own reader
    assert {r.custom_id for r in streamed} == set(results)


async def test_counts_stay_zero_until_ended(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.complete_after = 100
    created = await create_strict(ant, [item(f"r{i}") for i in range(4)])
    emu.clock.advance(60)
    batch = await retrieve_strict(ant, created.id)
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 4 and batch.request_counts.succeeded == 0
    assert len(emu.ledger.requests) == 2  # half of the requests already ran
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}  # the SDK refuses before asking
    async with aiohttp.ClientSession(headers=headers) as session, session.get(
            f"{emu.url}/v1/messages/batches/{created.id}/results") as response:
        assert response.status == 400
        assert "not ended" in (await response.json())["error"]["message"]
    emu.clock.advance(40)
    assert (await retrieve_strict(ant, created.id)).request_counts.succeeded == 4


async def test_cancel_keeps_what_ran(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.complete_after = 100
    created = await create_strict(ant, [item(f"r{i}") for i in range(10)])
    emu.clock.advance(50)
    raw = await ant.messages.batches.with_raw_response.cancel(created.id)
    canceling = conform(MessageBatch, raw.http_response.content)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    batch = await retrieve_strict(ant, created.id)
    assert batch.processing_status == "ended"
    assert (batch.request_counts.succeeded, batch.request_counts.canceled) == (5, 5)
    results = await results_strict(batch)
    assert sorted(r.result.type for r in results.values()) == ["canceled"] * 5 + ["succeeded"] * 5
    with pytest.raises(anthropic.BadRequestError, match="already ended"):
        await ant.messages.batches.cancel(created.id)


async def test_delete_only_once_ended(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.complete_after = 100
    created = await create_strict(ant, [item("a")])
    with pytest.raises(anthropic.BadRequestError, match="still processing"):
        await ant.messages.batches.delete(created.id)
    emu.clock.advance(100)
    raw = await ant.messages.batches.with_raw_response.delete(created.id)
    assert conform(DeletedMessageBatch, raw.http_response.content).id == created.id
    with pytest.raises(anthropic.NotFoundError) as caught:
        await ant.messages.batches.retrieve(created.id)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_pagination_newest_first_both_directions(ant: AsyncAnthropic) -> None:
    ids = [(await ant.messages.batches.create(requests=[item("a")])).id for _ in range(5)]
    raw = await ant.messages.batches.with_raw_response.list(limit=2)
    page = json.loads(raw.http_response.content)
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, ids[4], ids[3])
    for batch in page["data"]:
        conform(MessageBatch, json.dumps(batch))
    assert [b.id async for b in ant.messages.batches.list(limit=2)] == ids[::-1]
    after = await ant.messages.batches.list(limit=2, after_id=ids[3])
    assert [b.id for b in after.data] == [ids[2], ids[1]] and after.has_more is True
    before = await ant.messages.batches.list(limit=2, before_id=ids[1])
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more is True
    assert [b.id async for b in ant.messages.batches.list(limit=2, before_id=ids[0])] == [
        ids[2], ids[1], ids[4], ids[3]]


@pytest.mark.parametrize(
    ("requests", "fragment"),
    [
        ([item("ok"), item("has.dot")], "requests.1.custom_id: String should match pattern"),
        ([item("x" * 65)], "requests.0.custom_id: String should match pattern"),
        ([item("a"), item("b"), item("a")], "requests.2.custom_id: Duplicate custom_id 'a'"),
        ([{"custom_id": "a"}], "requests.0.params: Field required"),
        ([{"custom_id": "a", "params": {"model": "m", "messages": []}}],
         "requests.0.params.max_tokens: Field required"),
        ([item("a", max_tokens=0)], "requests.0.params.max_tokens: Input should be greater than or equal to 1"),
        ([{"custom_id": "a", "params": {"max_tokens": 5, "messages": []}}], "requests.0.params.model: Field required"),
        ([item("a", messages="hi")], "requests.0.params.messages: Input should be a valid list"),
        ([], "requests: List should have at least 1 item"),
    ],
)
async def test_create_rejections(ant: AsyncAnthropic, requests: list[dict[str, Any]], fragment: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await ant.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    body: Any = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert fragment in body["error"]["message"]
    assert body["request_id"] == caught.value.request_id


async def test_request_count_and_size_limits(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.anthropic_max_requests = 2
    with pytest.raises(anthropic.BadRequestError, match="at most 2 requests"):
        await ant.messages.batches.create(requests=[item("a"), item("b"), item("c")])
    emu.config.anthropic_max_body_bytes = 200
    with pytest.raises(anthropic.APIStatusError) as caught:
        await ant.messages.batches.create(requests=[item("a", "x" * 300)])
    assert caught.value.status_code == 413
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"requests": ['
        for _ in range(10):
            yield json.dumps(item("a", "y" * 50)).encode() + b","
        yield b"]}"

    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as session, session.post(
            emu.url + "/v1/messages/batches", data=chunks()) as response:
        assert response.status == 413
    assert emu.ledger.batches_created() == []


async def test_asynchronous_params_errors(ant: AsyncAnthropic) -> None:
    created = await ant.messages.batches.create(requests=[
        item("speed", speed="fast"),
        item("role", messages=[{"role": "system", "content": "x"}]),
        item("temperature", temperature=1.5),
        item("fine"),
    ])
    batch = await retrieve_strict(ant, created.id)
    results = await results_strict(batch)
    assert results["fine"].result.type == "succeeded"
    for custom_id, field in (("speed", "speed"), ("role", "messages.0.role"), ("temperature", "temperature")):
        result = results[custom_id].result
        assert result.type == "errored" and result.error.error.message.startswith(field)


async def test_anthropic_version_is_required(emu: Emulator) -> None:
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}) as session, session.get(
            emu.url + "/v1/messages/batches") as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == {"type": "invalid_request_error", "message": "anthropic-version: header is required"}
    assert body["request_id"] == response.headers["request-id"]


async def test_transient_404_after_create(emu: Emulator, ant: AsyncAnthropic) -> None:
    emu.config.anthropic_404_after_create = 30
    created = await create_strict(ant, [item("a")])
    with pytest.raises(anthropic.NotFoundError):
        await ant.messages.batches.retrieve(created.id)
    emu.clock.advance(31)
    assert (await ant.messages.batches.retrieve(created.id)).processing_status == "ended"


async def test_exact_params_are_recorded(emu: Emulator, ant: AsyncAnthropic) -> None:
    requests = [item("a", system="Answer yes or no.", temperature=0.2), item("b", "ünïcödé ☃")]
    created = await ant.messages.batches.create(requests=requests)
    assert emu.sent_requests(created.id) == requests
    await ant.messages.batches.retrieve(created.id)
    records = {r.custom_id: r for r in emu.ledger.requests}
    assert records["a"].identity == anthropic_identity(requests[0]["params"])
    assert emu.ledger.batch(created.id).request_count == 2
