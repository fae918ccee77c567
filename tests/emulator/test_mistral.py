"""Mistral Batch API conformance, driven through the official ``mistralai`` SDK over loopback; every answer
is parsed by the SDK into its own models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from asyncbatch.emulator import Emulator

mistralai = pytest.importorskip("mistralai.client")
from mistralai.client import Mistral, errors  # noqa: E402

KEY = "mistral-emulator-test-key"
MODEL = "mistral-small-latest"


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[Mistral]:
    async with Mistral(api_key=KEY, server_url=emu.mistral_base_url) as sdk:
        yield sdk


def line(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "body": {"max_tokens": 50, "messages": [{"role": "user", "content": text}],
                                             **body}}


async def upload(client: Mistral, lines: list[dict[str, Any]]) -> Any:
    data = b"".join(json.dumps(item).encode() + b"\n" for item in lines)
    return await client.files.upload_async(file={"file_name": "input.jsonl", "content": data}, purpose="batch")


async def download(client: Mistral, file_id: str) -> dict[str, Any]:
    response = await client.files.download_async(file_id=file_id)
    return {r["custom_id"]: r for r in map(json.loads, (await response.aread()).splitlines())}


async def test_file_job_lifecycle(emu: Emulator, client: Mistral) -> None:
    emu.config.complete_after = 100
    uploaded = await upload(client, [line("a", "one"), line("b", "two [[fail:422]]"), line("c", "three"),
                                     line("d", "four [[fail:500]]")])
    assert uploaded.purpose == "batch" and uploaded.sample_type == "batch_request" and uploaded.num_lines == 4
    job = await client.batch.jobs.create_async(input_files=[uploaded.id], model=MODEL, endpoint="/v1/chat/completions",
                                               metadata={"job": "x"})
    assert job.status == "QUEUED" and job.total_requests == 4 and job.metadata == {"job": "x"}
    emu.clock.advance(50)
    running = await client.batch.jobs.get_async(job_id=job.id)
    assert running.status == "RUNNING" and running.completed_requests == 2 and running.output_file is None
    emu.clock.advance(50)
    done = await client.batch.jobs.get_async(job_id=job.id)
    assert done.status == "SUCCESS" and done.completed_at is not None
    assert (done.succeeded_requests, done.failed_requests) == (2, 2)
    assert done.output_file and done.error_file
    assert (await client.files.retrieve_async(file_id=done.output_file)).sample_type == "batch_result"
    assert (await client.files.retrieve_async(file_id=done.error_file)).sample_type == "batch_error"
    output, failed = await download(client, done.output_file), await download(client, done.error_file)
    assert set(output) == {"a", "c"} and set(failed) == {"b", "d"}
    body = output["a"]["response"]["body"]
    assert output["a"]["response"]["status_code"] == 200 and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] and body["usage"]["prompt_tokens"] > 0
    assert [failed[c]["response"]["status_code"] for c in ("b", "d")] == [422, 500]


async def test_inline_job_outputs(client: Mistral) -> None:
    job = await client.batch.jobs.create_async(
        requests=[{"custom_id": "0", "body": {"messages": [{"role": "user", "content": "hi"}]}}],
        model=MODEL, endpoint="/v1/chat/completions")
    assert job.input_files == []
    done = await client.batch.jobs.get_async(job_id=job.id, inline=True)
    assert done.status == "SUCCESS" and done.outputs is not None
    assert done.outputs[0]["custom_id"] == "0" and done.outputs[0]["response"]["status_code"] == 200


async def test_embeddings_job(client: Mistral) -> None:
    uploaded = await upload(client, [{"custom_id": "e", "body": {"input": ["embed me"]}}])
    job = await client.batch.jobs.create_async(input_files=[uploaded.id], model="mistral-embed",
                                               endpoint="/v1/embeddings")
    done = await client.batch.jobs.get_async(job_id=job.id)
    result = (await download(client, done.output_file))["e"]
    assert result["response"]["body"]["data"][0]["embedding"]


async def test_list_pages_and_filters(emu: Emulator, client: Mistral) -> None:
    emu.config.complete_after = 100
    ids = []
    for i in range(5):
        job = await client.batch.jobs.create_async(
            requests=[{"custom_id": "0", "body": {"messages": [{"role": "user", "content": "hi"}]}}], model=MODEL,
            endpoint="/v1/chat/completions", metadata={"wave": str(i % 2)})
        ids.append(job.id)
    page = await client.batch.jobs.list_async(page=0, page_size=2)
    assert page.total == 5 and [j.id for j in page.data or []] == ids[:-3:-1]
    second = await client.batch.jobs.list_async(page=1, page_size=2)
    assert [j.id for j in second.data or []] == [ids[2], ids[1]]
    filtered = await client.batch.jobs.list_async(metadata={"wave": "1"})
    assert {j.id for j in filtered.data or []} == {ids[1], ids[3]}
    await client.batch.jobs.cancel_async(job_id=ids[0])
    cancelling = await client.batch.jobs.list_async(status=["CANCELLED", "CANCELLATION_REQUESTED"])
    assert [j.id for j in cancelling.data or []] == [ids[0]]


async def test_cancel_and_timeout(emu: Emulator, client: Mistral) -> None:
    emu.config.complete_after, emu.config.cancel_after = 100, 10
    uploaded = await upload(client, [line(f"r{i}", f"q {i}") for i in range(10)])
    job = await client.batch.jobs.create_async(input_files=[uploaded.id], model=MODEL, endpoint="/v1/chat/completions")
    emu.clock.advance(50)
    cancelling = await client.batch.jobs.cancel_async(job_id=job.id)
    assert cancelling.status == "CANCELLATION_REQUESTED"
    emu.clock.advance(10)
    cancelled = await client.batch.jobs.get_async(job_id=job.id)
    assert cancelled.status == "CANCELLED" and cancelled.succeeded_requests == 5
    assert len(await download(client, cancelled.output_file)) == 5
    with pytest.raises(errors.SDKError) as caught:
        await client.batch.jobs.cancel_async(job_id=job.id)
    assert caught.value.status_code == 400

    emu.config.complete_after = 0
    expiring = await client.batch.jobs.create_async(
        requests=[{"custom_id": "x", "body": {"messages": [{"role": "user", "content": "[[expire]]"}]}}], model=MODEL,
        endpoint="/v1/chat/completions")
    assert (await client.batch.jobs.get_async(job_id=expiring.id)).status == "TIMEOUT_EXCEEDED"


async def test_results_are_kept_24h(emu: Emulator, client: Mistral) -> None:
    job = await client.batch.jobs.create_async(
        requests=[{"custom_id": "0", "body": {"messages": [{"role": "user", "content": "hi"}]}}], model=MODEL,
        endpoint="/v1/chat/completions")
    done = await client.batch.jobs.get_async(job_id=job.id)
    emu.clock.advance(24 * 3600 + 1)
    with pytest.raises(errors.SDKError) as caught:
        await client.files.retrieve_async(file_id=done.output_file)
    assert caught.value.status_code == 404


async def test_rejections_and_auth(emu: Emulator, client: Mistral) -> None:
    with pytest.raises(errors.SDKError) as missing:
        await client.batch.jobs.get_async(job_id="nope")
    assert missing.value.status_code == 404
    with pytest.raises(errors.SDKError) as no_file:
        await client.batch.jobs.create_async(input_files=["nope"], model=MODEL, endpoint="/v1/chat/completions")
    assert no_file.value.status_code == 404
    emu.config.api_keys = [KEY]
    async with Mistral(api_key="wrong", server_url=emu.mistral_base_url) as bad:
        with pytest.raises(errors.SDKError) as refused:
            await bad.batch.jobs.list_async()
    assert refused.value.status_code == 401
