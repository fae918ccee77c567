"""What the gateway refuses, in OpenAI's error envelope and status codes, as the official SDK raises them."""

from __future__ import annotations

import json
import re

import aiohttp
import openai
import pytest

from asyncbatch.emulator import Emulator
from tests.gateway.conftest import MASTER, Gateway, GatewayFactory, chat, jsonl, upload, wait_for


async def test_an_oversize_file_is_413_and_nothing_is_kept(gateway_with: GatewayFactory) -> None:
    gateway = await gateway_with(max_batch_file_size_mb=0.05)  # 52,428 bytes
    client = gateway.client(await gateway.new_key())
    big = [chat(f"r{i}", "x" * 1000) for i in range(60)]
    with pytest.raises(openai.APIStatusError) as caught:
        await client.files.create(file=("big.jsonl", jsonl(big)), purpose="batch")
    assert caught.value.status_code == 413
    assert "max_batch_file_size_mb" in caught.value.message and caught.value.body["param"] == "file"  # type: ignore[index]
    assert (await client.files.list()).data == []
    await upload(client, big[:10])  # under the limit: fine


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n{not json\n',
     "line 2 is not valid JSON"),
    (b'["a list"]\n', "line 1 must be a JSON object"),
    (b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}\n', "Missing required parameter: 'method' "
                                                                         "(batch input file line 1)"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n\n{"custom_id": "b"}\n',
     "line 2 is blank"),
    (b"\n\n", "has no request lines"),
])
async def test_a_bad_line_is_refused_at_upload_naming_it(gateway: Gateway, content: bytes, expected: str) -> None:
    client = gateway.client(await gateway.new_key())
    with pytest.raises(openai.BadRequestError, match=re.escape(expected)):
        await client.files.create(file=("in.jsonl", content), purpose="batch")
    assert (await client.files.list()).data == []


async def test_uploads_must_be_jsonl_batch_files(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key())
    with pytest.raises(openai.BadRequestError, match=r"must be \.jsonl"):
        await client.files.create(file=("in.csv", jsonl([chat("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'"):
        await client.files.create(file=("in.jsonl", jsonl([chat("a")])), purpose="fine-tune")


async def test_a_bad_line_fails_the_batch_at_validation_naming_it_and_nothing_goes_upstream(
    gateway: Gateway, emu: Emulator
) -> None:
    client = gateway.client(await gateway.new_key())
    lines = [chat("a"), chat("b", model="gpt-5-unknown"), chat("c"), chat("a")]
    batch = await client.batches.create(input_file_id=await upload(client, lines), endpoint="/v1/chat/completions",
                                        completion_window="24h")
    assert batch.status == "failed" and batch.failed_at is not None and batch.errors and batch.errors.data
    (error,) = batch.errors.data
    assert (error.line, error.code, error.param) == (2, "model_not_found", "body.model")
    assert "gpt-5-unknown" in (error.message or "")
    # a duplicate custom_id is found by the store, with its line
    dup = await client.batches.create(input_file_id=await upload(client, [chat("a"), chat("c"), chat("a")]),
                                      endpoint="/v1/chat/completions", completion_window="24h")
    assert dup.status == "failed" and dup.errors and dup.errors.data
    assert (dup.errors.data[0].line, dup.errors.data[0].code) == (3, "duplicate_custom_id")
    assert (await wait_for(client, dup.id)).status == "failed"
    assert emu.ledger.batches_created() == [] and emu.ledger.files == []  # nothing went upstream


async def test_unknown_ids_are_404_on_every_route(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key())
    for call in (client.files.retrieve("file-nope"), client.files.content("file-nope"),
                 client.files.delete("file-nope"), client.batches.retrieve("batch_nope"),
                 client.batches.cancel("batch_nope"),
                 client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                                       completion_window="24h")):
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


async def test_bad_create_parameters_are_400(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key())
    file_id = await upload(client, [chat("a")])
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await client.batches.create(input_file_id=file_id, endpoint="/v1/nothing",  # type: ignore[arg-type]
                                    completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                    completion_window="1h")  # type: ignore[arg-type]


async def test_keys_are_checked_and_errors_are_openai_shaped(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        await gateway.client("sk-not-a-key").batches.list()
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/v1/batches") as response:
            assert response.status == 401
            assert set((await response.json())["error"]) == {"message", "type", "param", "code"}
        async with session.get(gateway.url + "/v1/nothing", headers={"Authorization": f"Bearer {MASTER}"}) as r:
            assert r.status == 404 and "error" in json.loads(await r.text())


async def test_list_paging_with_after_newest_first(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key())
    file_id = await upload(client, [chat("a")])
    made = [(await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                         completion_window="24h")).id for _ in range(5)]
    first = await client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = await client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in second.data] == made[::-1][2:4] and second.has_more
    every = [b.id async for b in client.batches.list(limit=2)]  # the SDK's own paging, with after
    assert every == made[::-1]
    files = [(await upload(client, [chat("x")], f"f{i}.jsonl")) for i in range(3)]
    page = await client.files.list(limit=2, purpose="batch")  # the batches' output files are listed too
    assert [f.id for f in page.data] == [files[2], files[1]]
    rest = await client.files.list(limit=2, after=page.data[-1].id, purpose="batch")
    assert [f.id for f in rest.data] == [files[0], file_id] and not rest.has_more
    with pytest.raises(openai.BadRequestError, match="after"):
        await client.batches.list(after="batch_nope")


async def test_routes_answer_without_the_v1_prefix_too(gateway: Gateway) -> None:
    client = gateway.client(await gateway.new_key(), v1=False)
    batch = await client.batches.create(input_file_id=await upload(client, [chat("a")]),
                                        endpoint="/v1/chat/completions", completion_window="24h")
    assert (await wait_for(client, batch.id)).status == "completed"
    assert [m.id async for m in client.models.list()] == ["gpt-4o-mini", "text-embedding-3-small", "claude-sonnet"]
