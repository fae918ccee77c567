"""OpenAI Files and Batch API conformance, driven through the official ``openai`` SDK over loopback."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types import (
    Batch,
    Completion,
    CreateEmbeddingResponse,
    FileDeleted,
    FileObject,
    ModerationCreateResponse,
)
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from asyncbatch.emulator import Emulator
from asyncbatch.model import Outcome

from .conftest import KEY
from .support import chat_line, conform, jsonl, parse_lines, upload


async def create(client: AsyncOpenAI, lines: list[dict[str, Any]] | bytes, **kwargs: Any) -> Batch:
    source = await upload(client, lines)
    args: dict[str, Any] = {"endpoint": "/v1/chat/completions", "completion_window": "24h", **kwargs}
    return await client.batches.create(input_file_id=source.id, **args)


async def retrieve_strict(client: AsyncOpenAI, batch_id: str) -> Batch:
    raw = await client.batches.with_raw_response.retrieve(batch_id)
    return conform(Batch, raw.http_response.content)


async def content(client: AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return parse_lines((await client.files.content(file_id)).text)


async def test_full_lifecycle(emu: Emulator, oai: AsyncOpenAI) -> None:
    lines = [chat_line(f"row-{i}", f"question {i}") for i in range(40)]
    lines[3] = chat_line("row-3", "please [[fail:400]]")
    lines[7] = chat_line("row-7", "please [[fail:500]]")
    source = await upload(oai, lines)
    assert (source.purpose, source.filename, source.bytes) == ("batch", "input.jsonl", len(jsonl(lines)))

    raw = await oai.batches.with_raw_response.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"job": "nightly", "token": "t-1"})
    assert raw.http_response.headers["x-request-id"].startswith("req_")
    created = conform(Batch, raw.http_response.content)
    assert created.status == "validating"
    assert created.expires_at == created.created_at + 24 * 3600

    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "completed"
    assert batch.metadata == {"job": "nightly", "token": "t-1"}
    assert batch.model == "gpt-5.4-mini"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (40, 38, 2)
    assert batch.created_at <= (batch.in_progress_at or 0) <= (batch.finalizing_at or 0) <= (batch.completed_at or 0)
    assert batch.usage is not None and batch.usage.output_tokens > 0

    output = await content(oai, batch.output_file_id)
    assert len(output) == 38
    assert [o["custom_id"] for o in output] != [f"row-{i}" for i in range(40) if i not in (3, 7)]  # shuffled
    for line in output:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        completion = conform(ChatCompletion, json.dumps(line["response"]["body"]))
        assert completion.choices[0].message.content
        assert completion.usage is not None and completion.usage.prompt_tokens > 0

    errors = {e["custom_id"]: e for e in await content(oai, batch.error_file_id)}
    assert set(errors) == {"row-3", "row-7"}
    assert errors["row-3"]["error"] is None
    assert errors["row-3"]["response"]["status_code"] == 400
    assert errors["row-3"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["row-7"]["response"]["status_code"] == 500

    outputs = [f async for f in oai.files.list(purpose="batch_output")]
    assert {f.id for f in outputs} == {batch.output_file_id, batch.error_file_id}
    assert {f.filename for f in outputs} == {f"{batch.id}_output.jsonl", f"{batch.id}_error.jsonl"}


async def test_timeline_follows_the_clock(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.validate_after, emu.config.complete_after, emu.config.finalize_after = 10, 110, 20
    created = await create(oai, [chat_line(f"r{i}") for i in range(10)])
    assert (await retrieve_strict(oai, created.id)).status == "validating"

    emu.clock.advance(10)
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "in_progress" and batch.in_progress_at == created.created_at + 10
    assert batch.request_counts is not None and batch.request_counts.completed == 0

    emu.clock.advance(50)
    batch = await retrieve_strict(oai, created.id)
    assert batch.request_counts is not None and batch.request_counts.completed == 5

    emu.clock.advance(50)
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "finalizing" and batch.finalizing_at == created.created_at + 110
    assert batch.output_file_id is None

    emu.clock.advance(20)
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "completed" and batch.completed_at == created.created_at + 130
    assert len(await content(oai, batch.output_file_id)) == 10


async def test_shortening_complete_after_ends_running_batches(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.complete_after = 3600
    created = await create(oai, [chat_line("a")])
    assert (await oai.batches.retrieve(created.id)).status == "in_progress"
    emu.config.complete_after = 0
    assert (await oai.batches.retrieve(created.id)).status == "completed"


async def test_file_pagination_and_order(emu: Emulator, oai: AsyncOpenAI) -> None:
    ids = [(await upload(oai, [chat_line("x")], name=f"f{i}.jsonl")).id for i in range(5)]
    raw = await oai.files.with_raw_response.list(limit=2)
    page = json.loads(raw.http_response.content)
    assert page["object"] == "list" and page["has_more"] is True
    assert [f["id"] for f in page["data"]] == ids[::-1][:2]
    assert (page["first_id"], page["last_id"]) == (ids[4], ids[3])
    for item in page["data"]:
        conform(FileObject, json.dumps(item))
    assert [f.id async for f in oai.files.list(limit=2)] == ids[::-1]
    assert [f.id async for f in oai.files.list(limit=2, order="asc")] == ids
    assert [f.id async for f in oai.files.list(purpose="user_data")] == []


async def test_batch_pagination_newest_first(emu: Emulator, oai: AsyncOpenAI) -> None:
    source = await upload(oai, [chat_line("x")])
    ids = [(await oai.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")).id for _ in range(5)]
    raw = await oai.batches.with_raw_response.list(limit=2)
    page = json.loads(raw.http_response.content)
    assert (page["object"], page["has_more"], page["first_id"], page["last_id"]) == ("list", True, ids[4], ids[3])
    for item in page["data"]:
        conform(Batch, json.dumps(item))
    assert [b.id async for b in oai.batches.list(limit=2)] == ids[::-1]
    last = await oai.batches.list(limit=2, after=ids[1])
    assert [b.id for b in last.data] == [ids[0]] and last.has_more is False


async def test_cancel_keeps_what_ran(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.complete_after = 100
    created = await create(oai, [chat_line(f"r{i}") for i in range(10)])
    emu.clock.advance(50)
    cancelling = await oai.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed == 5
    assert len(await content(oai, batch.output_file_id)) == 5
    errors = await content(oai, batch.error_file_id)
    assert len(errors) == 5
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert all(e["response"] is None for e in errors)
    assert (await oai.batches.cancel(created.id)).status == "cancelled"  # idempotent
    assert [r.outcome for r in emu.ledger.requests].count(Outcome.CANCELLED) == 5


async def test_cancel_of_a_completed_batch_is_refused(oai: AsyncOpenAI) -> None:
    created = await create(oai, [chat_line("a")])
    assert (await oai.batches.retrieve(created.id)).status == "completed"
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
        await oai.batches.cancel(created.id)


def _lines(*items: Any) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)


VALIDATION_CASES = {
    "invalid_json_line": (_lines(chat_line("a"), b'{"custom_id": "b", "method": '), 2, {}),
    "missing_required_parameter": (_lines(chat_line("a"), {"method": "POST", "url": "/v1/chat/completions",
                                                            "body": {"model": "gpt-5.4-mini"}}), 2, {}),
    "duplicate_custom_id": (_lines(chat_line("a"), chat_line("b"), chat_line("a")), 3, {}),
    "url_mismatch": (_lines(chat_line("a"), {**chat_line("b"), "url": "/v1/embeddings"}), 2, {}),
    "model_mismatch": (_lines(chat_line("a"), chat_line("b", model="gpt-5.4")), 2, {}),
    "invalid_method": (_lines({**chat_line("a"), "method": "GET"}), 1, {}),
    "too_many_tasks": (_lines(*(chat_line(f"r{i}") for i in range(4))), None, {"max_batch_lines": 3}),
    "file_too_large": (_lines(chat_line("a"), chat_line("b")), None, {"max_batch_file_bytes": 100}),
    "empty_file": (b"", None, {}),
    "token_limit_exceeded": (_lines(chat_line("a", "x" * 400)), None, {"token_limit": 50}),
}


@pytest.mark.parametrize("code", list(VALIDATION_CASES))
async def test_validation_failures(emu: Emulator, oai: AsyncOpenAI, code: str) -> None:
    data, line, knobs = VALIDATION_CASES[code]
    for name, value in knobs.items():
        setattr(emu.config, name, value)
    created = await create(oai, data)
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.object == "list" and batch.errors.data
    error = batch.errors.data[0]
    assert (error.code, error.line) == (code, line)
    assert error.message
    assert emu.ledger.requests == []
    assert emu.ledger.batch(created.id).status == "failed"


async def test_large_files_are_read_whole_and_named_by_line(emu: Emulator, oai: AsyncOpenAI) -> None:
    """Files of many read blocks, CRLF endings, blank lines and no final newline: every request is run with its
    own text, and a bad line deep in a file is named by its number."""
    lines = [json.dumps(chat_line(f"r{i:05}", f"question {i:05} " + "x" * 200)).encode() for i in range(9000)]
    data = b"".join(line + (b"\r\n" if i % 3 else b"\n") for i, line in enumerate(lines))
    data += b"\n \n" + lines[-1].replace(b"r08999", b"last")
    batch = await oai.batches.retrieve((await create(oai, data)).id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert batch.request_counts.completed == 9001
    output = await content(oai, batch.output_file_id)
    answers = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in output}
    assert all(f"question {i:05}" in answers[f"r{i:05}"] for i in range(9000)) and "08999" in answers["last"]

    lines[8500] = lines[17]
    batch = await oai.batches.retrieve((await create(oai, b"\n".join(lines))).id)
    assert batch.status == "failed" and batch.errors is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("duplicate_custom_id", 8501)]


async def test_token_limit_message_names_model_and_limit(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.token_limit = 10
    created = await create(oai, [chat_line("a", "y" * 100)])
    batch = await oai.batches.retrieve(created.id)
    assert batch.errors is not None and batch.errors.data
    assert "gpt-5.4-mini" in str(batch.errors.data[0].message) and "Limit: 10" in str(batch.errors.data[0].message)


async def test_all_failed_batch_completes_without_output_file(oai: AsyncOpenAI) -> None:
    created = await create(oai, [chat_line(f"r{i}", "[[fail:400]]") for i in range(3)])
    batch = await oai.batches.retrieve(created.id)
    assert batch.status == "completed" and batch.output_file_id is None and batch.error_file_id
    assert batch.request_counts is not None and batch.request_counts.failed == 3


async def test_endpoint_checks_fail_single_requests(oai: AsyncOpenAI) -> None:
    lines = [chat_line("ok"), chat_line("streamed", stream=True),
             {"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": "gpt-5.4-mini"}}]
    batch = await oai.batches.retrieve((await create(oai, lines)).id)
    errors = {e["custom_id"]: e["response"] for e in await content(oai, batch.error_file_id)}
    assert errors["streamed"]["status_code"] == 400 and errors["streamed"]["body"]["error"]["param"] == "stream"
    assert errors["no-messages"]["body"]["error"]["param"] == "messages"


async def test_forced_batch_expiry(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.expire_batches = [2]
    await create(oai, [chat_line("first")])
    created = await create(oai, [chat_line(f"r{i}") for i in range(10)])
    batch = await retrieve_strict(oai, created.id)
    assert batch.status == "expired" and batch.expired_at is not None and batch.completed_at is None
    assert len(await content(oai, batch.output_file_id)) == 5
    expired = await content(oai, batch.error_file_id)
    assert len(expired) == 5
    for line in expired:
        assert line["response"] is None and line["error"]["code"] == "batch_expired"
    assert emu.ledger.batch(created.id).status == "expired"


async def test_expire_marker_expires_the_batch_at_its_deadline(oai: AsyncOpenAI) -> None:
    created = await create(oai, [chat_line("a"), chat_line("b", "[[expire]]"), chat_line("c")])
    batch = await oai.batches.retrieve(created.id)
    assert batch.status == "expired"
    assert sorted(o["custom_id"] for o in await content(oai, batch.output_file_id)) == ["a", "c"]
    assert [(e["custom_id"], e["error"]["code"]) for e in await content(oai, batch.error_file_id)] == [
        ("b", "batch_expired")]


async def test_completion_window_expiry(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.complete_after = 48 * 3600  # slower than the 24 h window allows
    created = await create(oai, [chat_line(f"r{i}") for i in range(10)])
    emu.clock.advance(24 * 3600)
    batch = await oai.batches.retrieve(created.id)
    assert batch.status == "expired" and batch.expired_at == created.expires_at
    assert len(await content(oai, batch.output_file_id)) == 5


async def test_configurable_completion_windows(emu: Emulator, oai: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await create(oai, [chat_line("a")], completion_window="7d")
    emu.config.completion_windows = ["24h", "7d"]
    batch = await create(oai, [chat_line("a")], completion_window="7d")
    assert batch.expires_at == batch.created_at + 7 * 86400


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"endpoint": "/v1/audio/speech"}, "endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "16"),
        ({"metadata": {"k" * 65: "v"}}, "64"),
        ({"metadata": {"k": "v" * 513}}, "512"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after.seconds"),
    ],
)
async def test_create_rejections(oai: AsyncOpenAI, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(openai.BadRequestError, match=match):
        await create(oai, [chat_line("a")], **kwargs)


async def test_create_needs_an_existing_batch_file(oai: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                                 completion_window="24h")
    other = await oai.files.create(file=("notes.txt", b"hi"), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        await oai.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h")


async def test_output_expires_after_sets_file_expiry(oai: AsyncOpenAI) -> None:
    created = await create(oai, [chat_line("a")], output_expires_after={"anchor": "created_at", "seconds": 7200})
    batch = await oai.batches.retrieve(created.id)
    assert batch.output_file_id is not None
    output = await oai.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output" and output.expires_at == output.created_at + 7200


async def test_upload_rules(emu: Emulator, oai: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
        await oai.files.create(file=("input.csv", b"a,b\n"), purpose="batch")
    uploaded = await oai.files.create(file=("in.jsonl", b"{}\n"), purpose="batch",
                                      expires_after={"anchor": "created_at", "seconds": 3600})
    assert uploaded.expires_at == uploaded.created_at + 3600
    with pytest.raises(openai.BadRequestError, match=r"expires_after\.seconds"):
        await oai.files.create(file=("in.jsonl", b"{}\n"), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": 10})
    emu.config.max_file_bytes = 10
    with pytest.raises(openai.APIStatusError) as caught:
        await oai.files.create(file=("big.jsonl", b"x" * 11), purpose="batch")
    assert caught.value.status_code == 413


async def test_upload_accepts_dot_notation_and_checks_purpose(emu: Emulator) -> None:
    async def post(fields: dict[str, str]) -> tuple[int, dict[str, Any]]:
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field("file", b'{"a": 1}\n{"b": 2}', filename="in.jsonl")
        async with aiohttp.ClientSession(headers={"api-key": KEY}) as session, session.post(
                emu.openai_base_url + "/files", data=form) as response:
            return response.status, await response.json()

    status, body = await post({"purpose": "batch", "expires_after.anchor": "created_at",
                               "expires_after.seconds": "86400"})
    assert status == 200
    uploaded = conform(FileObject, json.dumps(body))
    assert uploaded.expires_at == uploaded.created_at + 86400 and uploaded.bytes == 17
    assert emu.ledger.files[-1].lines == 2
    status, body = await post({"purpose": "homework"})
    assert status == 400 and body["error"]["param"] == "purpose"


async def test_deleting_the_input_file_does_not_disturb_the_batch(emu: Emulator, oai: AsyncOpenAI) -> None:
    emu.config.validate_after = 10
    created = await create(oai, [chat_line("a"), chat_line("b")])
    await oai.files.delete(created.input_file_id)
    emu.clock.advance(10)
    batch = await oai.batches.retrieve(created.id)
    assert batch.status == "completed" and len(await content(oai, batch.output_file_id)) == 2
    assert [line["custom_id"] for line in emu.sent_requests(created.id)] == ["a", "b"]


async def test_delete_and_not_found(oai: AsyncOpenAI) -> None:
    source = await upload(oai, [chat_line("a")])
    raw = await oai.files.with_raw_response.delete(source.id)
    assert conform(FileDeleted, raw.http_response.content).deleted is True
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.files.retrieve(source.id)
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    with pytest.raises(openai.NotFoundError):
        await oai.files.content(source.id)
    with pytest.raises(openai.NotFoundError):
        await oai.batches.retrieve("batch_missing")
    with pytest.raises(openai.NotFoundError):
        await oai.batches.cancel("batch_missing")


@pytest.mark.parametrize(
    ("endpoint", "body", "model"),
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a", "b"]}, CreateEmbeddingResponse),
        ("/v1/responses", {"model": "gpt-5.4", "input": "hi", "instructions": "be brief"}, Response),
        ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi"}, Completion),
        ("/v1/moderations", {"model": "omni-moderation-latest", "input": ["fine", "bad [[flag]]"]},
         ModerationCreateResponse),
    ],
)
async def test_other_endpoints_get_plausible_bodies(
    oai: AsyncOpenAI, endpoint: str, body: dict[str, Any], model: type[Any]
) -> None:
    line = {"custom_id": "one", "method": "POST", "url": endpoint, "body": body}
    batch = await oai.batches.retrieve((await create(oai, [line], endpoint=endpoint)).id)
    [output] = await content(oai, batch.output_file_id)
    parsed = conform(model, json.dumps(output["response"]["body"]))
    if isinstance(parsed, CreateEmbeddingResponse):
        assert len(parsed.data) == 2 and len(parsed.data[0].embedding) == 8
    if isinstance(parsed, ModerationCreateResponse):
        assert [r.flagged for r in parsed.results] == [False, True]
