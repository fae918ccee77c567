"""GeminiProvider: construction, validation and encoding, then real runs against the emulator over loopback
(inline and file batches, embeddings, cancel, find() after a lost create reply with the provider's clock
hours away from ours, results that are gone), and Operation shapes the emulator does not make on a stub host."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from openai_support import FAST_RETRY, json_handler, stub_host, until_ended, write_shard

from asyncbatch.emulator import Emulator, FaultSpec
from asyncbatch.errors import AuthenticationError, ConnectionFailedError, NotFoundError, ValidationError
from asyncbatch.model import BatchStatus, Outcome, Request
from asyncbatch.providers import create_provider
from asyncbatch.providers.base import Provider, RemoteBatch, ResultLine
from asyncbatch.providers.gemini import GeminiProvider, grpc_http_status

SECRET = "AIza-test-DO-NOT-LEAK-0123456789"
MODEL = "gemini-2.5-flash"


def chat(custom_id: str, text: str, **body: Any) -> Request:
    return Request(custom_id=custom_id, body={"model": MODEL, "messages": [{"role": "user", "content": text}],
                                              **body})


@pytest.fixture
async def provider(emu: Emulator) -> AsyncIterator[GeminiProvider]:
    async with GeminiProvider(api_key=SECRET, base_url=emu.gemini_base_url, retry=FAST_RETRY) as made:
        yield made


async def collect(provider: GeminiProvider, batch: RemoteBatch, workdir: Path) -> dict[str, ResultLine]:
    return {line.wire_id: line async for line in provider.results(batch, workdir)}


# --- construction, validation, encoding (no I/O) ---------------------------------------------------------


def test_protocol_keys_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_GENAI_API_KEY", "not-this-one")
    provider = GeminiProvider()
    assert isinstance(provider, Provider) and provider.name == "gemini"
    assert provider.base_url == "https://generativelanguage.googleapis.com" and provider._api_key is None
    assert provider.results_retention == 48 * 3600
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key")
    assert GeminiProvider()._api_key == "google-key"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-key")
    assert GeminiProvider()._api_key == "gemini-key"  # GEMINI_API_KEY first, as the SDK reads them
    monkeypatch.setenv("GEMINI_BASE_URL", "http://127.0.0.1:9/")
    made = create_provider("gemini", api_version="v1beta")
    assert isinstance(made, GeminiProvider) and made.base_url == "http://127.0.0.1:9" and made.api_version == "v1beta"
    assert SECRET not in repr(GeminiProvider(api_key=SECRET))
    rebuilt = create_provider("gemini", **made.options())
    assert isinstance(rebuilt, GeminiProvider) and rebuilt.options() == made.options()


async def test_missing_key_is_reported_at_the_first_call(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AuthenticationError, match="GEMINI_API_KEY"):
        await GeminiProvider(base_url="http://127.0.0.1:9").retrieve("batches/x")


def test_check_and_model_of() -> None:
    provider = GeminiProvider(api_key=SECRET)
    provider.check(chat("a", "hi"))
    native = Request(custom_id="n", url="/v1beta/models/gemini-2.5-pro:generateContent",
                     body={"contents": [{"parts": [{"text": "hi"}]}]})
    provider.check(native)
    assert provider.model_of(native) == "gemini-2.5-pro"
    assert provider.model_of(chat("a", "hi", model="models/gemini-2.0-flash")) == "gemini-2.0-flash"
    cases = [
        (Request(custom_id="x", url="/v1/responses", body={"model": MODEL}), "url"),
        (Request(custom_id="x", body={"messages": [{"role": "user", "content": "hi"}]}), "body.model"),
        (Request(custom_id="x", method="GET", body={}), "method"),
        (Request(custom_id="x", url=native.url, body={"stream": True}), "body.stream"),
        (chat("x", "hi", n=0, logit_bias={"1": 2}), "body.logit_bias"),
    ]
    for request, field in cases:
        with pytest.raises(ValidationError) as caught:
            provider.check(request)
        assert caught.value.field == field


def test_encode_line_and_native_request() -> None:
    provider = GeminiProvider(api_key=SECRET)
    wire = provider.wire_id("any custom id, however long " * 20, 7, "0123456789abcdef" * 2)
    assert wire == "0123456789abcdef-7"
    line = json.loads(provider.encode_line(wire, "/v1/chat/completions", msgspec.json.encode(chat("a", "hi").body)))
    assert line == {"key": wire, "request": {"contents": [{"parts": [{"text": "hi"}], "role": "user"}]}}
    native_body = b'{"contents":[{"parts":[{"text":"as is"}]}],"generationConfig":{"topK":3}}'
    spliced = provider.encode_line(wire, "/v1/models/m:generateContent", native_body)
    assert spliced == b'{"key":"0123456789abcdef-7","request":' + native_body + b"}"
    request = provider.native_request({"key": "k1", "request": {"model": "models/gemini-2.5-pro", "contents": []}})
    assert (request.custom_id, request.url) == ("k1", "/v1/models/gemini-2.5-pro:generateContent")
    assert "model" not in request.body
    embed = provider.native_request({"key": "e", "request": {"content": {"parts": []}}}, model="gemini-embedding-001")
    assert embed.url == "/v1/models/gemini-embedding-001:embedContent"
    with pytest.raises(ValidationError) as caught:
        provider.native_request({"key": "k", "request": {"contents": []}})
    assert (caught.value.custom_id, caught.value.field) == ("k", "request.model")


@pytest.mark.parametrize(("code", "status", "http"), [
    (3, None, 400), (8, None, 429), (13, None, 500), (14, None, 503), (None, "RESOURCE_EXHAUSTED", 429),
    (400, None, 400), (None, None, 500),
])
def test_grpc_codes_become_http_statuses(code: int | None, status: str | None, http: int) -> None:
    assert grpc_http_status(code, status) == http


# --- against the emulator --------------------------------------------------------------------------------


@pytest.mark.parametrize("inline", [True, False])
async def test_lifecycle_inline_or_file(
    emu: Emulator, provider: GeminiProvider, spool_dir: Path, workdir: Path, inline: bool
) -> None:
    provider.inline_max_bytes = 1 << 20 if inline else 0
    requests = [chat("a", "one"), chat("b", "two [[fail:429]]"), chat("c", "three [[fail:400]]"), chat("d", "four")]
    shard = write_shard(provider, spool_dir, requests)
    file_id = await provider.upload(shard)
    assert (file_id is None) is inline
    created = await provider.create(shard, file_id)
    assert created.id.startswith("batches/") and created.token == shard.token
    assert created.status is BatchStatus.VALIDATING and created.counts["total"] == 4
    ended = await until_ended(provider, created)
    assert ended.status is BatchStatus.COMPLETED and ended.counts == {"total": 4, "completed": 2, "failed": 2,
                                                                     "pending": 0}
    assert (ended.output_file_id is None) is inline
    lines = await collect(provider, ended, workdir)
    wire = {r.custom_id: provider.wire_id(r.custom_id, i, shard.token) for i, r in enumerate(requests, start=1)}
    assert set(lines) == set(wire.values())
    ok = lines[wire["a"]]
    assert ok.outcome is Outcome.SUCCEEDED and ok.status_code == 200 and ok.model == MODEL
    assert ok.usage is not None and ok.usage.output_tokens > 0 and ok.body is not None
    assert json.loads(bytes(ok.body))["candidates"][0]["content"]["parts"][0]["text"].startswith("Emulated reply")
    assert (lines[wire["b"]].outcome, lines[wire["b"]].status_code) == (Outcome.ERRORED, 429)
    assert (lines[wire["c"]].status_code, lines[wire["c"]].error_code) == (400, "INVALID_ARGUMENT")
    batch = emu.ledger.batches_created("gemini")[0]
    assert batch.metadata == {"displayName": f"asyncbatch {shard.job_id} {shard.token}"}


async def test_embeddings_always_go_through_a_file(provider: GeminiProvider, spool_dir: Path, workdir: Path) -> None:
    request = Request(custom_id="e", url="/v1/embeddings", body={"model": "gemini-embedding-001", "input": "hi",
                                                                 "dimensions": 3})
    shard = write_shard(provider, spool_dir, [request])
    file_id = await provider.upload(shard)
    assert file_id is not None and file_id.startswith("files/")
    ended = await until_ended(provider, await provider.create(shard, file_id))
    (line,) = (await collect(provider, ended, workdir)).values()
    assert line.outcome is Outcome.SUCCEEDED and line.body is not None
    assert len(json.loads(bytes(line.body))["embedding"]["values"]) == 3


async def test_cancel(emu: Emulator, provider: GeminiProvider, spool_dir: Path, workdir: Path) -> None:
    emu.config.complete_after = 100
    shard = write_shard(provider, spool_dir, [chat(f"r{i}", f"q {i}") for i in range(4)])
    created = await provider.create(shard, await provider.upload(shard))
    emu.clock.advance(50)
    cancelled = await provider.cancel(created.id)
    assert cancelled.status is BatchStatus.CANCELLED and cancelled.cancel_requested
    lines = await collect(provider, cancelled, workdir)
    assert len(lines) == 2 and all(line.outcome is Outcome.SUCCEEDED for line in lines.values())


@pytest.mark.parametrize("skew", [-5 * 3600.0, 0.0, 3 * 86400.0])
async def test_find_after_a_lost_create_reply_whatever_the_providers_clock(
    emu: Emulator, provider: GeminiProvider, spool_dir: Path, skew: float
) -> None:
    emu.clock.advance(skew)
    for i in range(3):  # other batches, before and after
        other = write_shard(provider, spool_dir, [chat("o", f"other {i}")], shard_id=10 + i)
        if i == 1:
            emu.config.faults = {"gemini_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)}
            shard = write_shard(provider, spool_dir, [chat("a", "mine")])
            with pytest.raises(ConnectionFailedError):
                await provider.create(shard, await provider.upload(shard))
        await provider.create(other, await provider.upload(other))
    made = [b for b in emu.ledger.batches_created("gemini") if shard.token in (b.metadata or {})["displayName"]]
    assert len(made) == 1  # the lost reply did create it
    found = await provider.find(shard)
    assert found is not None and found.id == made[0].id and found.token == shard.token
    assert await provider.find(shard, exclude={found.id}) is None
    stranger = write_shard(provider, spool_dir, [chat("z", "never created")], shard_id=99)
    assert await provider.find(stranger) is None


@pytest.mark.parametrize(("age", "pages"), [(2 * 3600.0, 1), (60.0, 3)])
async def test_find_pages_back_to_the_shard_on_the_providers_clock(spool_dir: Path, age: float, pages: int) -> None:
    """Google's clock (its Date header) is a day off ours: a page whose last batch was created ``age`` before
    the shard entered ``creating`` (on Google's clock) ends the search; newer ones page on to the end."""
    google_now = time.time() - 86400.0

    def page(token: str | None) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            stamp = email.utils.formatdate(google_now, usegmt=True)
            created = datetime.fromtimestamp(google_now - age, UTC).isoformat().replace("+00:00", "Z")
            operations = [{"name": f"batches/{token}-{i}", "metadata": {"state": "BATCH_STATE_RUNNING",
                                                                       "displayName": "someone else",
                                                                       "createTime": created}} for i in range(2)]
            body = {"operations": operations, **({"nextPageToken": token} if token else {})}
            return web.json_response(body, headers={"Date": stamp})

        return handler

    async def listing(request: web.Request) -> web.StreamResponse:
        token = request.query.get("pageToken")
        return await page({None: "p2", "p2": "p3", "p3": None}[token])(request)

    async with stub_host({"GET /v1/batches": listing}) as host:
        async with GeminiProvider(api_key=SECRET, base_url=host.url) as provider:
            shard = write_shard(provider, spool_dir, [chat("a", "x")])
            assert await provider.find(shard) is None
        assert len(host.paths("GET")) == pages


async def test_results_are_gone_after_48h(emu: Emulator, provider: GeminiProvider, spool_dir: Path,
                                          workdir: Path) -> None:
    provider.inline_max_bytes = 0
    shard = write_shard(provider, spool_dir, [chat("a", "hi")])
    ended = await until_ended(provider, await provider.create(shard, await provider.upload(shard)))
    emu.clock.advance(48 * 3600 + 1)
    with pytest.raises(NotFoundError):
        await collect(provider, ended, workdir)


async def test_a_wrong_key_never_leaks(emu: Emulator, spool_dir: Path) -> None:
    emu.config.api_keys = ["the-right-key"]
    async with GeminiProvider(api_key=SECRET, base_url=emu.gemini_base_url, retry=FAST_RETRY) as provider:
        with pytest.raises(AuthenticationError) as caught:
            await provider.retrieve("batches/x")
    assert SECRET not in str(caught.value) and caught.value.status == 400  # Google's answer to a wrong key


async def test_failed_operation_and_unknown_state(tmp_path: Path) -> None:
    failed = {"name": "batches/f", "done": True, "error": {"code": 3, "message": "bad model"},
              "metadata": {"state": "BATCH_STATE_FAILED", "displayName": "asyncbatch job_1 tok",
                           "createTime": "2026-01-01T00:00:00.123456789Z"}}
    pending = {"name": "batches/p", "metadata": {"state": "JOB_STATE_PENDING"}}
    weird = {"name": "batches/w", "metadata": {"state": "BATCH_STATE_SIDEWAYS"}}
    routes = {"GET /v1/batches/f": json_handler(failed), "GET /v1/batches/p": json_handler(pending),
              "GET /v1/batches/w": json_handler(weird)}
    async with stub_host(routes) as host, GeminiProvider(api_key=SECRET, base_url=host.url) as provider:
        remote = await provider.retrieve("batches/f")
        assert remote.status is BatchStatus.FAILED and remote.token == "tok"
        assert [(e.code, e.message) for e in remote.errors] == [("invalid_request", "bad model")]
        assert remote.created_at == pytest.approx(1767225600.123456)
        assert (await provider.retrieve("batches/p")).status is BatchStatus.VALIDATING
        with pytest.raises(Exception, match="unknown state"):
            await provider.retrieve("batches/w")
        assert host.seen[0].headers["x-goog-api-key"] == SECRET


async def test_injected_faults_are_retried_and_a_cut_download_is_retryable(
    emu: Emulator, provider: GeminiProvider, spool_dir: Path, workdir: Path
) -> None:
    provider.inline_max_bytes = 0
    emu.config.faults = {
        "gemini_upload": FaultSpec(rate_503=1.0, max_faults=1),
        "gemini_create": FaultSpec(rate_429=1.0, retry_after=0.01, max_faults=1),
        "gemini_read": FaultSpec(rate_500=1.0, max_faults=2),
    }
    shard = write_shard(provider, spool_dir, [chat("a", "hi"), chat("b", "there")])
    ended = await until_ended(provider, await provider.create(shard, await provider.upload(shard)))
    assert sorted(f.kind for f in emu.ledger.faults) == ["429", "500", "500", "503"]
    emu.config.faults = {"gemini_download": FaultSpec(truncate_rate=1.0, max_faults=1)}
    with pytest.raises(ConnectionFailedError):
        await collect(provider, ended, workdir)
    assert len(await collect(provider, ended, workdir)) == 2  # the engine starts over: the next try is whole


@pytest.mark.parametrize("block", [1, 7, 1 << 20])  # spool blocks end anywhere, on a newline or not
async def test_inline_create_body_is_exact_whatever_the_blocks(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    from asyncbatch.providers import gemini as gemini_module

    monkeypatch.setattr(gemini_module, "BODY_BLOCK", block)
    operation = {"name": "batches/b", "metadata": {"state": "BATCH_STATE_PENDING"}}
    async with stub_host({f"POST /v1/models/{MODEL}:batchGenerateContent": json_handler(operation)}) as host:
        async with GeminiProvider(api_key=SECRET, base_url=host.url) as provider:
            shard = write_shard(provider, spool_dir, [chat("a", "one"), chat("b", "two\nlines"), chat("c", "ü")])
            assert await provider.upload(shard) is None
            await provider.create(shard)
        (seen,) = host.seen
    body = json.loads(seen.body)
    assert body["batch"]["displayName"] == f"asyncbatch {shard.job_id} {shard.token}"
    items = body["batch"]["inputConfig"]["requests"]["requests"]
    assert [i["metadata"]["key"] for i in items] == [provider.wire_id("", n, shard.token) for n in (1, 2, 3)]
    assert [i["request"]["contents"][0]["parts"][0]["text"] for i in items] == ["one", "two\nlines", "ü"]
    assert seen.headers["content-type"] == "application/json" and seen.headers["x-goog-api-key"] == SECRET
