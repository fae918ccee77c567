"""Gemini Batch Mode conformance, driven through the official ``google-genai`` SDK over loopback.

Every answer is parsed by the SDK into its own types; what the SDK drops (``batchStats``, the Operation's
``error``) is read raw and checked against the wire shapes of the reference.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from asyncbatch.emulator import Emulator

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

KEY = "AIza-emulator-test-key"
MODEL = "gemini-2.5-flash"


@pytest.fixture
async def client(emu: Emulator) -> AsyncIterator[Any]:
    sdk = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=emu.gemini_base_url))
    yield sdk.aio
    await sdk.aio.aclose()


def line(key: str, text: str, **request: Any) -> dict[str, Any]:
    return {"key": key, "request": {"contents": [{"parts": [{"text": text}], "role": "user"}], **request}}


async def upload(client: Any, lines: list[dict[str, Any]]) -> Any:
    data = b"".join(json.dumps(item).encode() + b"\n" for item in lines)
    config = types.UploadFileConfig(mime_type="application/jsonl", display_name="input.jsonl")
    return await client.files.upload(file=io.BytesIO(data), config=config)


async def raw(emu: Emulator, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"x-goog-api-key": KEY}) as session, session.request(
            method, emu.gemini_base_url + path, **kwargs) as response:
        return response.status, await response.json()


async def test_file_batch_lifecycle(emu: Emulator, client: Any) -> None:
    emu.config.complete_after = 100
    uploaded = await upload(client, [line("a", "one"), line("b", "two [[fail:400]]"), line("c", "three [[fail:503]]"),
                                     line("d", "four")])
    assert uploaded.name.startswith("files/") and uploaded.source == types.FileSource.UPLOADED
    assert uploaded.size_bytes > 0 and uploaded.download_uri is None
    job = await client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "wave 1"})
    assert job.name.startswith("batches/") and job.display_name == "wave 1"
    assert job.state == types.JobState.JOB_STATE_PENDING and job.model == f"models/{MODEL}"

    emu.clock.advance(50)
    running = await client.batches.get(name=job.name)
    assert running.state == types.JobState.JOB_STATE_RUNNING and running.dest is None
    status, operation = await raw(emu, "GET", f"/v1/{job.name}")
    stats = operation["metadata"]["batchStats"]
    assert status == 200 and operation["done"] is False
    assert stats == {"requestCount": "4", "successfulRequestCount": stats["successfulRequestCount"],
                     "failedRequestCount": stats["failedRequestCount"], "pendingRequestCount": "2"}
    assert all(isinstance(v, str) for v in stats.values())  # int64 counters travel as strings

    emu.clock.advance(50)
    done = await client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.end_time is not None
    assert done.dest is not None and done.dest.file_name is not None
    _, operation = await raw(emu, "GET", f"/v1/{job.name}")
    assert operation["done"] is True and operation["response"]["responsesFile"] == done.dest.file_name
    assert operation["metadata"]["batchStats"]["failedRequestCount"] == "2"

    generated = await client.files.get(name=done.dest.file_name)
    assert generated.source == types.FileSource.GENERATED and generated.download_uri
    downloaded = await client.files.download(file=done.dest.file_name)
    results = {r["key"]: r for r in map(json.loads, downloaded.splitlines())}
    assert set(results) == {"a", "b", "c", "d"}
    answer = types.GenerateContentResponse.model_validate(results["a"]["response"])
    assert answer.text and answer.usage_metadata is not None and answer.usage_metadata.prompt_token_count
    assert results["b"]["error"] == {"code": 3, "status": "INVALID_ARGUMENT",
                                     "message": results["b"]["error"]["message"]}
    assert results["c"]["error"]["status"] == "UNAVAILABLE" and results["c"]["error"]["code"] == 14


async def test_inline_batch_echoes_metadata(emu: Emulator, client: Any) -> None:
    requests = [
        types.InlinedRequest(contents=f"question {i}", metadata={"key": f"k{i}"},
                             config=types.GenerateContentConfig(temperature=0.2, system_instruction="be brief",
                                                                max_output_tokens=5 if i == 2 else None))
        for i in range(3)
    ]
    job = await client.batches.create(model=MODEL, src=requests, config={"display_name": "inline"})
    done = await client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest.file_name is None
    inlined = {r.metadata["key"]: r for r in done.dest.inlined_responses}
    assert set(inlined) == {"k0", "k1", "k2"}
    assert inlined["k0"].response.text.startswith("Emulated reply")
    assert inlined["k2"].response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    sent = emu.sent_requests(job.name)
    assert sent[0]["request"]["systemInstruction"] == {"parts": [{"text": "be brief"}], "role": "user"}


async def test_list_pages_newest_first(client: Any) -> None:
    names = []
    for i in range(5):
        job = await client.batches.create(model=MODEL, src=[types.InlinedRequest(contents="x", metadata={"key": "a"})],
                                          config={"display_name": f"job {i}"})
        names.append(job.name)
    pager = await client.batches.list(config={"page_size": 2})
    assert len(pager.page) == 2
    assert [b.name async for b in pager] == names[::-1]


async def test_cancel_keeps_what_ran(emu: Emulator, client: Any) -> None:
    emu.config.complete_after = 100
    uploaded = await upload(client, [line(f"r{i}", f"q {i}") for i in range(10)])
    job = await client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "to cancel"})
    emu.clock.advance(50)
    await client.batches.cancel(name=job.name)
    cancelled = await client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    kept = (await client.files.download(file=cancelled.dest.file_name)).splitlines()
    assert len(kept) == 5  # the half that ran; the rest has no line
    with pytest.raises(errors.ClientError) as caught:
        await client.batches.cancel(name=job.name)
    assert caught.value.code == 400 and caught.value.status == "FAILED_PRECONDITION"
    await client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as missing:
        await client.batches.get(name=job.name)
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"


async def test_expired_batch(emu: Emulator, client: Any) -> None:
    uploaded = await upload(client, [line("a", "fine"), line("b", "never [[expire]]")])
    job = await client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "expiring"})
    ended = await client.batches.get(name=job.name)
    assert ended.state == types.JobState.JOB_STATE_EXPIRED
    downloaded = await client.files.download(file=ended.dest.file_name)
    assert [json.loads(x)["key"] for x in downloaded.splitlines()] == ["a"]


async def test_embeddings_batch(client: Any) -> None:
    data = [{"key": "e1", "request": {"content": {"parts": [{"text": "embed me"}]}, "outputDimensionality": 4}}]
    uploaded = await upload(client, data)
    job = await client.batches.create_embeddings(model="gemini-embedding-001", src={"file_name": uploaded.name},
                                                 config={"display_name": "embeddings"})
    done = await client.batches.get(name=job.name)
    result = json.loads(await client.files.download(file=done.dest.file_name))
    assert result["key"] == "e1" and len(result["response"]["embedding"]["values"]) == 4


async def test_uploaded_files_cannot_be_downloaded_and_files_go_after_48h(emu: Emulator, client: Any) -> None:
    uploaded = await upload(client, [line("a", "x")])
    status, body = await raw(emu, "GET", f"/v1/{uploaded.name}:download", params={"alt": "media"})
    assert status == 400 and "Only generated files" in body["error"]["message"]
    emu.clock.advance(48 * 3600 + 1)
    with pytest.raises(errors.ClientError) as caught:
        await client.files.get(name=uploaded.name)
    assert caught.value.code == 404


async def test_v1beta_and_snake_case_bodies(emu: Emulator) -> None:
    batch = {"display_name": "snake", "input_config": {"requests": {"requests": [
        {"request": {"contents": [{"parts": [{"text": "hi"}]}]}, "metadata": {"key": "s1"}}]}}}
    status, operation = await raw(emu, "POST", f"/v1beta/models/{MODEL}:batchGenerateContent", json={"batch": batch})
    assert status == 200 and operation["metadata"]["displayName"] == "snake"
    status, operation = await raw(emu, "GET", f"/v1beta/{operation['name']}")
    inlined = operation["response"]["inlinedResponses"]["inlinedResponses"]
    assert status == 200 and inlined[0]["metadata"] == {"key": "s1"}


@pytest.mark.parametrize(
    ("batch", "fragment"),
    [
        ({"inputConfig": {"fileName": "files/x"}}, "display_name: required"),
        ({"displayName": "d"}, "exactly one of file_name or requests"),
        ({"displayName": "d", "inputConfig": {"requests": {"requests": []}}}, "at least one request"),
        ({"displayName": "d", "inputConfig": {"requests": {"requests": [{"metadata": {"key": "a"}}]}}},
         "request: required"),
    ],
)
async def test_create_rejections(emu: Emulator, batch: dict[str, Any], fragment: str) -> None:
    status, body = await raw(emu, "POST", f"/v1/models/{MODEL}:batchGenerateContent", json={"batch": batch})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and fragment in body["error"]["message"]


async def test_auth(emu: Emulator) -> None:
    emu.config.api_keys = [KEY]
    bad = genai.Client(api_key="wrong", http_options=types.HttpOptions(base_url=emu.gemini_base_url))
    with pytest.raises(errors.ClientError) as caught:
        await bad.aio.batches.get(name="batches/x")
    assert caught.value.code == 400 and caught.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    async with aiohttp.ClientSession() as session, session.get(emu.gemini_base_url + "/v1/batches") as response:
        assert response.status == 403 and (await response.json())["error"]["status"] == "PERMISSION_DENIED"
