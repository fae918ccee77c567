"""OpenAIProvider and AzureOpenAIProvider: validation, wire encoding, and full runs over loopback."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest
from aiohttp import web
from openai_support import FAST_RETRY, chat, json_handler, stub_host, until_ended, write_shard

from asyncbatch.emulator import Emulator, FaultSpec
from asyncbatch.errors import (
    AuthenticationError,
    ConnectionFailedError,
    ProviderError,
    TransientError,
    ValidationError,
)
from asyncbatch.http import HttpClient, RetryPolicy
from asyncbatch.model import BatchStatus, Outcome, Request, ShardInfo, Usage
from asyncbatch.providers.base import Provider, RemoteBatch, ResultLine
from asyncbatch.providers.openai import TOKEN_KEY, AzureOpenAIProvider, OpenAIProvider

SECRET = "sk-test-DO-NOT-LEAK-0123456789"


# --- construction, validation, encoding (no I/O) ---------------------------------------------------------


def test_satisfies_provider_protocol() -> None:
    assert isinstance(OpenAIProvider(api_key="k"), Provider)
    assert isinstance(AzureOpenAIProvider(api_key="k", base_url="https://r.openai.azure.com"), Provider)


def test_configuration_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert OpenAIProvider().base_url == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")
    assert OpenAIProvider().base_url == "http://127.0.0.1:9/v1"
    assert (
        OpenAIProvider(base_url="https://api.groq.com/openai/v1").base_url == "https://api.groq.com/openai/v1"
    )
    limits = OpenAIProvider().limits
    assert limits.max_requests == 50_000
    assert 190 * 2**20 < limits.max_bytes < 200 * 2**20
    assert OpenAIProvider(name="groq").name == "groq"
    assert OpenAIProvider.name == "openai"


@pytest.mark.parametrize(
    ("given", "api_version", "expected"),
    [
        ("https://res.openai.azure.com", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com/", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com/openai", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com/openai/v1", None, "https://res.openai.azure.com/openai/v1"),
        ("https://res.openai.azure.com", "2024-10-21", "https://res.openai.azure.com/openai"),
        ("http://127.0.0.1:8080/v1", None, "http://127.0.0.1:8080/v1"),
    ],
)
def test_azure_base_url(given: str, api_version: str | None, expected: str) -> None:
    provider = AzureOpenAIProvider(api_key="k", base_url=given, api_version=api_version)
    assert provider.base_url == expected
    assert provider.name == "azure"
    assert provider.limits.max_requests == 100_000


def test_azure_endpoint_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    assert AzureOpenAIProvider().base_url == "https://res.openai.azure.com/openai/v1"
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT")
    with pytest.raises(ValidationError, match="AZURE_OPENAI_ENDPOINT"):
        AzureOpenAIProvider()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (Request(custom_id="a", url="/v1/chat/completions/", body={"model": "m"}), "url"),
        (Request(custom_id="a", url="/v1/messages", body={"model": "m"}), "url"),
        (Request(custom_id="a", method="GET", body={"model": "m"}), "method"),
        (Request(custom_id="a", body={"messages": []}), "body.model"),
        (Request(custom_id="a", url="/v1/embeddings", body={"input": "x"}), "body.model"),
        (Request(custom_id="a", body={"model": 4, "messages": []}), "body.model"),
        (Request(custom_id="a", body={"model": "m", "messages": [], "stream": True}), "body.stream"),
        (Request(custom_id="a", body={"model": "m"}), "body.messages"),
        (Request(custom_id="a", body={"model": "m", "messages": None}), "body.messages"),
        (Request(custom_id="a", body={"model": "m", "messages": []}), "body.messages"),
        (Request(custom_id="a", body={"model": "m", "messages": "hi"}), "body.messages"),
        (Request(custom_id="a", body={"model": "m", "messages": {"role": "user"}}), "body.messages"),
        (Request(custom_id="a", body={"model": "m", "messages": [{"role": "user", "content": "x"}, "y"]}),
         "body.messages"),
        (Request(custom_id="a", url="/v1/embeddings", body={"model": "m"}), "body.input"),
        (Request(custom_id="a", url="/v1/embeddings", body={"model": "m", "input": ""}), "body.input"),
        (Request(custom_id="a", url="/v1/embeddings", body={"model": "m", "input": None}), "body.input"),
        (Request(custom_id="a", url="/v1/moderations", body={}), "body.input"),
        (Request(custom_id="a", url="/v1/completions", body={"model": "m"}), "body.prompt"),
    ],
)
def test_check_rejects(request_: Request, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        OpenAIProvider().check(request_)
    assert info.value.field == field


def test_check_accepts() -> None:
    provider = OpenAIProvider()
    provider.check(chat("a", "hi"))
    provider.check(Request(custom_id="b", body={"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                "stream": False}))
    provider.check(Request(custom_id="e", url="/v1/embeddings", body={"model": "m", "input": [1, 2]}))  # tokens
    provider.check(Request(custom_id="c", url="/v1/moderations", body={"input": "text"}))  # model optional
    provider.check(Request(custom_id="d", url="/v1/responses", body={"model": "m", "input": "x"}))
    assert provider.model_of(chat("a", "hi", model="gpt-x")) == "gpt-x"
    assert provider.model_of(Request(custom_id="c", url="/v1/moderations", body={"input": "t"})) is None


def test_check_follows_configured_endpoints() -> None:
    groq = OpenAIProvider(name="groq", endpoints=("/v1/chat/completions", "/v1/audio/transcriptions"))
    groq.check(Request(custom_id="a", url="/v1/audio/transcriptions", body={"model": "whisper-large-v3"}))
    with pytest.raises(ValidationError, match="groq batches do not run '/v1/embeddings'") as info:
        groq.check(Request(custom_id="a", url="/v1/embeddings", body={"model": "m", "input": "x"}))
    assert info.value.field == "url"
    azure = AzureOpenAIProvider(api_key="k", base_url="https://r.openai.azure.com")
    with pytest.raises(ValidationError):
        azure.check(Request(custom_id="a", url="/v1/images/generations", body={"prompt": "cat"}))


def test_check_job_options() -> None:
    provider = OpenAIProvider()
    provider.check_job_options("24h", {f"k{i}": "v" for i in range(15)})  # 15 + our token = 16
    provider.check_job_options("24h", {"k" * 64: "v" * 512})
    cases: list[tuple[str, dict[str, str], str]] = [
        ("48h", {}, "completion_window"),
        ("24h", {f"k{i}": "v" for i in range(16)}, "metadata"),
        ("24h", {"k" * 65: "v"}, "metadata"),
        ("24h", {"": "v"}, "metadata"),
        ("24h", {"k": "v" * 513}, "metadata.k"),
        ("24h", {TOKEN_KEY: "mine"}, f"metadata.{TOKEN_KEY}"),
    ]
    for window, metadata, field in cases:
        with pytest.raises(ValidationError) as info:
            provider.check_job_options(window, metadata)
        assert info.value.field == field, (window, metadata)
    OpenAIProvider(completion_windows=("24h", "7d")).check_job_options("7d", {})


def test_encode_line_is_exact_and_splices_the_body() -> None:
    provider = OpenAIProvider()
    body = b'{"model":"m","messages":[{"role":"user","content":"caf\\u00e9 \xc3\xa9"}],"n":1.50}'
    custom_id = 'row "1"\n\u00e9'
    assert provider.wire_id(custom_id, 7, "tok") == custom_id
    line = provider.encode_line(custom_id, "/v1/chat/completions", body)
    assert line == (
        b'{"custom_id":"row \\"1\\"\\n\xc3\xa9","method":"POST","url":"/v1/chat/completions","body":'
        + body
        + b"}"
    )
    assert b"\n" not in line
    decoded = json.loads(line)
    assert decoded["custom_id"] == custom_id
    assert decoded["body"]["messages"][0]["content"] == "caf\u00e9 \u00e9"


def test_repr_and_missing_key_never_show_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = OpenAIProvider(api_key=SECRET)
    assert SECRET not in repr(provider) and SECRET not in str(provider)
    assert repr(provider) == "OpenAIProvider(name='openai', base_url='https://api.openai.com/v1')"


async def test_missing_key_is_reported_at_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    async with OpenAIProvider() as provider:  # building without a key is fine: `asyncbatch status` needs none
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
            await provider.retrieve("batch_1")
    async with AzureOpenAIProvider(base_url="https://r.openai.azure.com") as azure:
        with pytest.raises(AuthenticationError, match="AZURE_OPENAI_API_KEY"):
            await azure.retrieve("batch_1")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    routes = {"GET /v1/batches/batch_1": json_handler(_batch_json("batch_1"))}
    async with stub_host(routes) as host, OpenAIProvider(base_url=host.url + "/v1") as from_env:
        assert (await from_env.retrieve("batch_1")).id == "batch_1"
        assert host.seen[0].headers["authorization"] == f"Bearer {SECRET}"


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _listdir(path: Path) -> list[Path]:
    return list(path.iterdir())


def _batch_json(
    batch_id: str, created_at: float = 0, token: str | None = None, **extra: object
) -> dict[str, object]:
    return {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": int(created_at),
        "request_counts": {"total": 2, "completed": 1, "failed": 0},
        "metadata": {TOKEN_KEY: token} if token else None,
        **extra,
    }


# --- host variants over a recording stub (shapes the emulator does not speak) ----------------------------


def _multipart_fields(body: bytes) -> dict[str, bytes]:
    """name -> value of each part (enough for our two-field uploads)."""
    boundary = body.split(b"\r\n", 1)[0]
    fields = {}
    for part in body.split(boundary)[1:-1]:
        head, _, value = part.removeprefix(b"\r\n").removesuffix(b"\r\n").partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value
        if b'filename="' in head:
            fields["filename"] = head.split(b'filename="', 1)[1].split(b'"', 1)[0]
    return fields


async def test_azure_api_version_routes(spool_dir: Path, workdir: Path) -> None:
    output = b'{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"body":{}},"error":null}\n'

    async def content(request: web.Request) -> web.Response:
        return web.Response(body=output)

    routes = {
        "POST /openai/files": json_handler({"id": "file-az1", "object": "file", "purpose": "batch"}),
        "POST /openai/batches": json_handler(_batch_json("batch_az", status="validating")),
        "GET /openai/batches/batch_az": json_handler(
            _batch_json("batch_az", created_at=0, status="Completed", output_file_id="file-out")
            | {"created_at": "2026-01-01T00:00:00Z"}
        ),
        "GET /openai/files/file-out/content": content,
        "GET /openai/batches": json_handler({"data": [_batch_json("batch_az", time.time(), token="a" * 32)]}),
    }
    async with (
        stub_host(routes) as host,
        AzureOpenAIProvider(api_key=SECRET, base_url=host.url, api_version="2024-10-21") as provider,
    ):
        shard = write_shard(provider, spool_dir, [chat("a", "hi")], token="a" * 32)
        file_id = await provider.upload(shard)
        created = await provider.create(shard, file_id)
        batch = await provider.retrieve(created.id)
        results = [r async for r in provider.results(batch, workdir)]
        found = await provider.find(shard)
    assert found is not None and found.id == "batch_az"
    assert host.paths() == [
        "/openai/files",
        "/openai/batches",
        "/openai/batches/batch_az",
        "/openai/files/file-out/content",
        "/openai/batches",
    ]
    assert host.seen.pop().query == {"api-version": "2024-10-21", "limit": "100"}
    for seen in host.seen:
        assert seen.query == {"api-version": "2024-10-21"}
        assert seen.headers["api-key"] == SECRET
        assert "authorization" not in seen.headers
    upload = _multipart_fields(host.seen[0].body)
    assert upload["purpose"] == b"batch"
    assert upload["filename"] == b"job_test-1.jsonl"
    assert upload["file"] == _read(Path(shard.spool_path))
    create_body = json.loads(host.seen[1].body)
    assert create_body == {
        "input_file_id": "file-az1",
        "endpoint": "/chat/completions",
        "completion_window": "24h",
        "metadata": {TOKEN_KEY: shard.token},
    }
    assert batch.status is BatchStatus.COMPLETED and batch.raw_status == "Completed"
    assert batch.created_at == 1767225600.0
    assert [(r.wire_id, r.outcome) for r in results] == [("a", Outcome.SUCCEEDED)]


async def test_groq_cursor_paging_and_bare_errors(spool_dir: Path) -> None:
    provider_shard_token = "f" * 32
    now = time.time()

    async def listing(request: web.Request) -> web.Response:
        if request.query.get("cursor") == "page2":
            data = [_batch_json("batch_02", now - 5, token=provider_shard_token)]
            return web.json_response({"object": "list", "data": data, "paging": {"next_cursor": None}})
        data = [_batch_json("batch_01", now - 1, token="other")]
        return web.json_response({"object": "list", "data": data, "paging": {"next_cursor": "page2"}})

    failed = _batch_json("batch_03", status="failed") | {
        "errors": [{"code": "invalid_json_line", "message": "bad line", "line": 3, "param": None}]
    }
    routes = {"GET /openai/v1/batches": listing, "GET /openai/v1/batches/batch_03": json_handler(failed)}
    async with (
        stub_host(routes) as host,
        OpenAIProvider(name="groq", api_key="gsk", base_url=host.url + "/openai/v1") as groq,
    ):
        shard = write_shard(groq, spool_dir, [chat("a", "hi")], token=provider_shard_token)
        found = await groq.find(shard)
        batch = await groq.retrieve("batch_03")
    assert found is not None and found.id == "batch_02" and found.token == provider_shard_token
    assert [s.query for s in host.seen[:2]] == [{"limit": "100"}, {"limit": "100", "cursor": "page2"}]
    assert batch.status is BatchStatus.FAILED
    assert [(e.code, e.line) for e in batch.errors] == [("invalid_json_line", 3)]


async def test_together_shapes(spool_dir: Path) -> None:
    job = {
        "id": "tb-1",
        "status": "VALIDATING",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-t1",
        "created_at": "2026-01-01T00:00:10Z",
        "progress": 0,
    }
    routes = {
        "POST /v1/files": json_handler({"id": "file-t1", "object": "file", "purpose": "batch-api"}),
        "POST /v1/batches": json_handler({"job": job, "warning": None}),
        "GET /v1/batches": json_handler([job | {"status": "IN_PROGRESS"}]),
    }
    async with (
        stub_host(routes) as host,
        OpenAIProvider(
            name="together", api_key="tk", base_url=host.url + "/v1", file_purpose="batch-api"
        ) as together,
    ):
        shard = write_shard(together, spool_dir, [chat("a", "hi")])
        batch = await together.create(shard, await together.upload(shard))
        assert await together.find(shard) is None  # Together keeps no metadata: nothing to match on
    assert _multipart_fields(host.seen[0].body)["purpose"] == b"batch-api"
    assert batch == RemoteBatch(
        id="tb-1", status=BatchStatus.VALIDATING, raw_status="VALIDATING", created_at=1767225610.0
    )
    assert host.paths("GET") == ["/v1/batches"]  # a bare array is one page


async def test_find_stops_paging_at_the_horizon(spool_dir: Path) -> None:
    """Pages reach back one hour per page; the search must stop once past created_at - 10 min."""
    now = time.time()
    pages = {
        None: [_batch_json(f"batch_{i:03}", now - i * 60, token="x") for i in range(0, 50)],
        "batch_049": [_batch_json(f"batch_{i:03}", now - i * 60, token="x") for i in range(50, 100)],
        "batch_099": [_batch_json(f"batch_{i:03}", now - i * 60, token="x") for i in range(100, 150)],
    }

    async def listing(request: web.Request) -> web.Response:
        data = pages[request.query.get("after")]
        return web.json_response(
            {"object": "list", "data": data, "has_more": True, "last_id": data[-1]["id"]}
        )

    async with (
        stub_host({"GET /v1/batches": listing}) as host,
        OpenAIProvider(api_key="k", base_url=host.url + "/v1") as provider,
    ):
        recent = write_shard(provider, spool_dir, [chat("a", "hi")], created_at=now - 30 * 60)
        assert await provider.find(recent) is None
        assert [s.query.get("after") for s in host.seen] == [None]  # page 1 already reaches past 40 min ago
        host.seen.clear()
        older = write_shard(provider, spool_dir, [chat("a", "hi")], created_at=now - 80 * 60)
        assert await provider.find(older) is None
        assert [s.query.get("after") for s in host.seen] == [None, "batch_049"]


async def test_results_memory_stays_flat_and_nothing_is_written(tmp_path: Path, workdir: Path) -> None:
    """A 20 MB output file is decoded as it streams in, with a few MB of peak memory and no file on disk."""
    import tracemalloc

    big = tmp_path / "out.jsonl"
    filler = "x" * 400
    with big.open("wb") as out:
        for i in range(40_000):
            body = {
                "model": "m",
                "choices": [{"message": {"content": filler}}],
                "usage": {"prompt_tokens": i},
            }
            line = {
                "id": f"batch_req_{i}",
                "custom_id": f"c{i}",
                "response": {"status_code": 200, "body": body},
            }
            out.write(msgspec.json.encode(line) + b"\n")
    size = big.stat().st_size

    async def content(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(big)

    routes = {"GET /v1/files/file-big/content": content}
    batch = RemoteBatch(
        id="batch_big", status=BatchStatus.COMPLETED, raw_status="completed", output_file_id="file-big"
    )
    async with stub_host(routes) as host, OpenAIProvider(api_key="k", base_url=host.url + "/v1") as provider:
        tracemalloc.start()
        count = tokens = 0
        async for result in provider.results(batch, workdir):
            count += 1
            tokens += result.usage.input_tokens if result.usage else 0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == 40_000 and tokens == sum(range(40_000))
        assert size > 18 * 2**20 and peak < 6 * 2**20, (size, peak)
        assert _listdir(workdir) == []

        stream = provider.results(batch, workdir)
        first = await anext(stream)
        assert first.wire_id == "c0" and _listdir(workdir) == []
        await stream.aclose()


async def test_result_lines_are_normalised(workdir: Path) -> None:
    chat_body = {
        "id": "chatcmpl-1",
        "model": "gpt-5.4-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "positive"}}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}},
    }
    responses_body = {"model": "gpt-5.4", "usage": {"input_tokens": 20, "output_tokens": 5}}
    embedding_body = {"object": "list", "model": "text-embedding-3-small", "usage": {"prompt_tokens": 7}}
    bad_request = {"error": {"message": "Invalid value", "type": "invalid_request_error", "code": None}}

    def line(
        custom_id: str, status: int | None = None, body: object = None, error: str | None = None
    ) -> bytes:
        response = {"status_code": status, "request_id": f"req_{custom_id}", "body": body} if status else None
        failure = {"code": error, "message": f"{error} happened"} if error else None
        item = {
            "id": f"batch_req_{custom_id}",
            "custom_id": custom_id,
            "response": response,
            "error": failure,
        }
        return msgspec.json.encode(item) + b"\n"

    output = (
        line("chat", 200, chat_body)
        + b"\n"
        + line("resp", 200, responses_body)
        + line("emb", 200, embedding_body)
    )
    errors = (
        line("bad", 400, bad_request)
        + line("boom", 500, "upstream said no")
        + line("late", error="batch_expired")
        + line("stop", error="batch_cancelled")
        + line("odd", error="server_error")
    )
    files = {"file-out": output, "file-err": errors}

    async def content(request: web.Request) -> web.Response:
        return web.Response(body=files[request.match_info["tail"].split("/")[2]])

    routes = {f"GET /v1/files/{name}/content": content for name in files}
    batch = RemoteBatch(
        id="batch_1",
        status=BatchStatus.COMPLETED,
        raw_status="completed",
        output_file_id="file-out",
        error_file_id="file-err",
    )
    async with stub_host(routes) as host, OpenAIProvider(api_key="k", base_url=host.url + "/v1") as provider:
        results = {r.wire_id: r async for r in provider.results(batch, workdir)}
    assert all(s.headers["accept"] == "application/binary" for s in host.seen)
    assert list(results) == ["chat", "resp", "emb", "bad", "boom", "late", "stop", "odd"]
    ok = results["chat"]
    assert (ok.outcome, ok.status_code, ok.model, ok.request_id, ok.line_id) == (
        Outcome.SUCCEEDED,
        200,
        "gpt-5.4-mini",
        "req_chat",
        "batch_req_chat",
    )
    assert ok.body is not None and msgspec.json.decode(ok.body) == chat_body
    assert ok.usage == Usage(input_tokens=14, output_tokens=3, cached_input_tokens=8)
    assert results["resp"].usage == Usage(input_tokens=20, output_tokens=5)
    assert results["emb"].usage == Usage(input_tokens=7)
    bad = results["bad"]
    assert (bad.outcome, bad.status_code, bad.error_code, bad.error_message) == (
        Outcome.ERRORED,
        400,
        "invalid_request_error",
        "Invalid value",
    )
    boom = results["boom"]
    assert (boom.outcome, boom.status_code, boom.error_code, boom.usage) == (Outcome.ERRORED, 500, None, None)
    assert boom.body is not None and msgspec.json.decode(boom.body) == "upstream said no"
    assert [
        (results[k].outcome, results[k].error_code, results[k].body) for k in ("late", "stop", "odd")
    ] == [
        (Outcome.EXPIRED, "batch_expired", None),
        (Outcome.CANCELLED, "batch_cancelled", None),
        (Outcome.FAILED, "server_error", None),
    ]
    assert results["odd"].error_message == "server_error happened"


# --- against the emulator --------------------------------------------------------------------------------

KEY = "sk-emu-key-0123456789"


@pytest.fixture
async def provider(emu: Emulator) -> AsyncIterator[OpenAIProvider]:
    async with OpenAIProvider(api_key=KEY, base_url=emu.openai_base_url, retry=FAST_RETRY) as openai:
        yield openai


async def _run(provider: OpenAIProvider, shard: ShardInfo) -> RemoteBatch:
    return await until_ended(provider, await provider.create(shard, await provider.upload(shard)))


async def _collect(provider: OpenAIProvider, batch: RemoteBatch, workdir: Path) -> dict[str, ResultLine]:
    results = {r.wire_id: r async for r in provider.results(batch, workdir)}
    assert _listdir(workdir) == []
    return results


MIXED = [
    chat("ok-1", "hello there"),
    chat("ok-2", "a longer prompt " * 20),
    chat("bad", "please [[fail:400]]"),
    chat("boom", "please [[fail:500]]"),
    chat('odd "id" \u00e9', "unicode id"),
]


async def test_full_cycle(emu: Emulator, provider: OpenAIProvider, spool_dir: Path, workdir: Path) -> None:
    shard = write_shard(provider, spool_dir, MIXED, metadata={"team": "eval"})
    file_id = await provider.upload(shard)
    created = await provider.create(shard, file_id)
    assert created.token == shard.token and created.status is BatchStatus.VALIDATING
    batch = await until_ended(provider, created)
    assert (batch.status, batch.counts) == (BatchStatus.COMPLETED, {"total": 5, "completed": 3, "failed": 2})
    assert batch.output_file_id and batch.error_file_id and batch.created_at > time.time() - 60

    (uploaded,) = [f for f in emu.ledger.files if f.id == file_id]
    assert (uploaded.filename, uploaded.purpose, uploaded.bytes, uploaded.lines) == (
        "job_test-1.jsonl",
        "batch",
        shard.bytes,
        5,
    )
    (record,) = emu.ledger.batches_created()
    assert record.metadata == {"team": "eval", TOKEN_KEY: shard.token}
    assert record.endpoint == "/v1/chat/completions"
    sent = emu.sent_requests(batch.id)
    assert [line["custom_id"] for line in sent] == [r.custom_id for r in MIXED]
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in sent)
    assert [line["body"] for line in sent] == [r.body for r in MIXED]

    results = await _collect(provider, batch, workdir)
    assert {k: (r.outcome, r.status_code) for k, r in results.items()} == {
        "ok-1": (Outcome.SUCCEEDED, 200),
        "ok-2": (Outcome.SUCCEEDED, 200),
        'odd "id" \u00e9': (Outcome.SUCCEEDED, 200),
        "bad": (Outcome.ERRORED, 400),
        "boom": (Outcome.ERRORED, 500),
    }
    for result in results.values():
        assert result.request_id and result.line_id and result.body is not None
    ok = results["ok-2"]
    assert ok.model == "gpt-5.4-mini" and ok.usage is not None
    assert ok.usage.input_tokens > results["ok-1"].usage.input_tokens > 0  # type: ignore[union-attr]
    assert ok.usage.output_tokens > 0
    body = msgspec.json.decode(ok.body)  # type: ignore[arg-type]
    assert body["usage"]["prompt_tokens"] == ok.usage.input_tokens
    assert results["bad"].error_code and results["bad"].usage is None


@pytest.mark.parametrize(
    "request_",
    [
        Request(custom_id="e", url="/v1/embeddings", body={"model": "text-embedding-3-small", "input": "hi"}),
        Request(custom_id="r", url="/v1/responses", body={"model": "gpt-5.4-mini", "input": "hello there"}),
    ],
)
async def test_usage_of_other_endpoints(
    provider: OpenAIProvider, spool_dir: Path, workdir: Path, request_: Request
) -> None:
    batch = await _run(provider, write_shard(provider, spool_dir, [request_]))
    (result,) = (await _collect(provider, batch, workdir)).values()
    assert result.outcome is Outcome.SUCCEEDED and result.usage is not None and result.usage.input_tokens > 0


async def test_expired_batch(emu: Emulator, provider: OpenAIProvider, spool_dir: Path, workdir: Path) -> None:
    emu.config.expire_batches = [1]
    batch = await _run(provider, write_shard(provider, spool_dir, [chat(f"r{i}", "hi") for i in range(10)]))
    assert batch.status is BatchStatus.EXPIRED
    outcomes = Counter(r.outcome for r in (await _collect(provider, batch, workdir)).values())
    assert set(outcomes) == {Outcome.SUCCEEDED, Outcome.EXPIRED} and sum(outcomes.values()) == 10


async def test_cancel(emu: Emulator, provider: OpenAIProvider, spool_dir: Path, workdir: Path) -> None:
    emu.config.complete_after = 3600
    shard = write_shard(provider, spool_dir, [chat(f"r{i}", "hi") for i in range(4)])
    created = await provider.create(shard, await provider.upload(shard))
    cancelling = await provider.cancel(created.id)
    assert cancelling.cancel_requested and cancelling.status in (
        BatchStatus.CANCELLING,
        BatchStatus.CANCELLED,
    )
    batch = await until_ended(provider, cancelling)
    assert batch.status is BatchStatus.CANCELLED and batch.cancel_requested
    results = await _collect(provider, batch, workdir)
    assert {r.outcome for r in results.values()} == {Outcome.CANCELLED}
    assert {r.error_code for r in results.values()} == {"batch_cancelled"}


async def test_find_recovers_a_lost_create(emu: Emulator, provider: OpenAIProvider, spool_dir: Path) -> None:
    shard = write_shard(provider, spool_dir, [chat("a", "hi")])
    other = write_shard(provider, spool_dir, [chat("b", "hi")], shard_id=2)
    assert await provider.find(shard) is None
    created = await provider.create(shard, await provider.upload(shard))  # ... and the id is "lost"
    await provider.create(other, await provider.upload(other))
    found = await provider.find(shard)
    assert found is not None and (found.id, found.token) == (created.id, shard.token)
    absent = write_shard(provider, spool_dir, [chat("c", "hi")], shard_id=3)
    assert await provider.find(absent) is None


@pytest.mark.parametrize(
    ("fault", "error", "created"),
    [
        (FaultSpec(rate_500=1.0, max_faults=1), TransientError, 0),
        (FaultSpec(rate_503=1.0, max_faults=1), TransientError, 0),
        (FaultSpec(drop_rate=1.0, max_faults=1), ConnectionFailedError, 0),
        (FaultSpec(drop_after_create_rate=1.0, max_faults=1), ConnectionFailedError, 1),
    ],
)
async def test_ambiguous_create_failures_are_raised_once_and_find_tells_what_exists(
    emu: Emulator, provider: OpenAIProvider, spool_dir: Path, fault: FaultSpec, error: type[ProviderError],
    created: int,
) -> None:
    """After a 5xx or a dropped connection the batch may exist: create() tries once and raises (retryable), and
    the engine's find() by token says whether it does, so that no second batch is made for the shard."""
    shard = write_shard(provider, spool_dir, [chat("a", "hi")])
    file_id = await provider.upload(shard)
    emu.config.faults = {"batches_create": fault}
    with pytest.raises(error) as info:
        await provider.create(shard, file_id)
    assert info.value.retryable and len(emu.ledger.faults) == 1  # one try only
    assert len(emu.ledger.batches_created()) == created
    found = await provider.find(shard)
    if created:
        (record,) = emu.ledger.batches_created()
        assert found is not None and (found.id, found.token) == (record.id, shard.token)
    else:
        assert found is None


async def test_rate_limits_honour_retry_after(
    emu: Emulator, provider: OpenAIProvider, spool_dir: Path
) -> None:
    shard = write_shard(provider, spool_dir, [chat("a", "hi")])
    created = await provider.create(shard, await provider.upload(shard))
    emu.config.faults = {
        "batches_read": FaultSpec(rate_429=1.0, retry_after=0.2, max_faults=2),
        "batches_create": FaultSpec(rate_429=1.0, retry_after=0.1, max_faults=1),
    }
    started = time.monotonic()
    assert (await provider.retrieve(created.id)).id == created.id
    assert time.monotonic() - started >= 0.4
    second = write_shard(provider, spool_dir, [chat("b", "hi")], shard_id=2)
    await provider.create(second, await provider.upload(second))
    assert [f.kind for f in emu.ledger.faults] == ["429", "429", "429"]
    assert len(emu.ledger.batches_created()) == 2


async def test_server_error_storm(emu: Emulator, spool_dir: Path, workdir: Path) -> None:
    """5xx all over (and twice on create): the run completes with one batch and the right results."""
    emu.config.faults = {
        "*": FaultSpec(rate_500=0.3, rate_503=0.3, max_faults=12),
        "batches_create": FaultSpec(),  # create is not retried on a 5xx: see the test above
    }
    retry = RetryPolicy(max_retries=12, base_delay=0.005, max_delay=0.02)
    async with OpenAIProvider(api_key=KEY, base_url=emu.openai_base_url, retry=retry) as provider:
        batch = await _run(provider, write_shard(provider, spool_dir, MIXED))
        results = await _collect(provider, batch, workdir)
    assert {k: r.outcome for k, r in results.items()} == {r.custom_id: _expected(r) for r in MIXED}
    assert len(emu.ledger.batches_created()) == 1
    faults = Counter((f.group, f.kind) for f in emu.ledger.faults)
    assert {kind for _, kind in faults} == {"500", "503"} and faults.total() >= 6


def _expected(request: Request) -> Outcome:
    return Outcome.ERRORED if "[[fail:" in request.body["messages"][0]["content"] else Outcome.SUCCEEDED


async def test_dropped_connections(
    emu: Emulator, provider: OpenAIProvider, spool_dir: Path, workdir: Path
) -> None:
    emu.config.faults = {
        group: FaultSpec(drop_rate=1.0, max_faults=2)
        for group in ("files_upload", "batches_read", "files_content")  # create: not retried, see above
    }
    batch = await _run(provider, write_shard(provider, spool_dir, MIXED))
    results = await _collect(provider, batch, workdir)
    assert len(results) == 5 and len(emu.ledger.batches_created()) == 1
    assert Counter(f.group for f in emu.ledger.faults) == {"files_upload": 2, "batches_read": 2, "files_content": 2}


async def test_a_cut_download_ends_in_a_retryable_error_after_whole_lines_only(
    emu: Emulator, provider: OpenAIProvider, spool_dir: Path, workdir: Path
) -> None:
    """Results are decoded as they stream in, so a body cut short cannot be retried behind the caller's
    back: it yields only the lines that arrived whole, then a retryable error (the engine starts over)."""
    batch = await _run(provider, write_shard(provider, spool_dir, MIXED))
    clean = await _collect(provider, batch, workdir)
    emu.config.faults = {"files_content": FaultSpec(truncate_rate=1.0, max_faults=1)}
    received: list[ResultLine] = []
    with pytest.raises(ConnectionFailedError) as info:
        async for line in provider.results(batch, workdir):
            received.append(line)
    assert info.value.retryable and "/content" in str(info.value)
    assert len(received) < len(clean) and all(clean[line.wire_id] == line for line in received)
    assert [f.kind for f in emu.ledger.faults] == ["truncate"]
    assert await _collect(provider, batch, workdir) == clean  # the next attempt reads everything


async def test_wrong_key_never_leaks(
    emu: Emulator, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emu.config.api_keys = ["sk-the-right-one"]
    caplog.set_level(logging.DEBUG)
    async with OpenAIProvider(api_key=SECRET, base_url=emu.openai_base_url, retry=FAST_RETRY) as provider:
        shard = write_shard(provider, spool_dir, [chat("a", "hi")])
        for call in (provider.upload(shard), provider.find(shard), provider.cancel("batch_x")):
            with pytest.raises(AuthenticationError) as info:
                await call
            error = info.value
            assert error.status == 401
            for text in (str(error), repr(error), error.message, repr(provider)):
                assert SECRET not in text
    assert SECRET not in caplog.text


async def test_azure_style_run(emu: Emulator, spool_dir: Path, workdir: Path) -> None:
    emu.config.api_keys = [KEY]  # the upload must pass with the `api-key` header alone
    async with AzureOpenAIProvider(api_key=KEY, base_url=emu.openai_base_url, retry=FAST_RETRY) as azure:
        shard = write_shard(azure, spool_dir, MIXED[:3])
        batch = await _run(azure, shard)
        results = await _collect(azure, batch, workdir)
    assert {k: r.outcome for k, r in results.items()} == {
        "ok-1": Outcome.SUCCEEDED,
        "ok-2": Outcome.SUCCEEDED,
        "bad": Outcome.ERRORED,
    }
    (record,) = emu.ledger.batches_created()
    assert record.endpoint == "/v1/chat/completions"  # sent as Azure's "/chat/completions", read as the lines' url


async def test_a_streamed_body_may_be_consumed_for_longer_than_the_request_timeout() -> None:
    """Ingesting a large results file takes as long as the store needs: the client's timeout bounds each wait
    for bytes, not the whole transfer (a total would cut every long ingestion and start it over for ever)."""
    lines = [b'{"i":%d,"pad":"%s"}' % (i, b"x" * 100_000) for i in range(20)]  # 2 MB: more than aiohttp buffers

    async def content(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"\n".join(lines) + b"\n")

    async with stub_host({"GET /v1/files/f/content": content}) as host:
        client = HttpClient(host.url, headers={}, timeout=0.3)
        received = []
        try:
            async for _, line in client.lines("/v1/files/f/content"):
                received.append(line)
                await anyio.sleep(0.05)  # a slow consumer: 20 lines take 1 s, over three times the timeout
        finally:
            await client.aclose()
    assert received == lines


async def test_streamed_lines_are_numbered_as_in_the_body_and_blank_ones_skipped() -> None:
    async def content(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b'{"a":1}\n\n   \n{"b":2}\r\n{"c":3}')  # no newline after the last line

    async with stub_host({"GET /v1/files/f/content": content}) as host:
        client = HttpClient(host.url, headers={})
        try:
            numbered = [item async for item in client.lines("/v1/files/f/content")]
        finally:
            await client.aclose()
    assert numbered == [(1, b'{"a":1}'), (4, b'{"b":2}\r'), (5, b'{"c":3}')]
