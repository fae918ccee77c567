"""MistralProvider: construction, validation and the light translation, then real runs against the emulator
(inline and file jobs, output and error files, cancel, find() after a lost create reply with Mistral's clock
off ours, results gone after 24 h)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from openai_support import FAST_RETRY, until_ended, write_shard

from asyncbatch.emulator import Emulator, FaultSpec
from asyncbatch.errors import ConnectionFailedError, NotFoundError, UnsupportedFeatureError, ValidationError
from asyncbatch.model import BatchStatus, Outcome, Request
from asyncbatch.providers import create_provider
from asyncbatch.providers.base import Provider, RemoteBatch, ResultLine
from asyncbatch.providers.mistral import MistralProvider, mistral_body, timeout_hours

SECRET = "mistral-test-DO-NOT-LEAK-0123456789"
MODEL = "mistral-small-latest"


def chat(custom_id: str, text: str, **body: Any) -> Request:
    return Request(custom_id=custom_id, body={"model": MODEL, "messages": [{"role": "user", "content": text}],
                                              **body})


@pytest.fixture
async def provider(emu: Emulator) -> AsyncIterator[MistralProvider]:
    async with MistralProvider(api_key=SECRET, base_url=emu.mistral_base_url, retry=FAST_RETRY) as made:
        yield made


async def collect(provider: MistralProvider, batch: RemoteBatch, workdir: Path) -> dict[str, ResultLine]:
    return {line.wire_id: line async for line in provider.results(batch, workdir)}


def test_protocol_key_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MISTRAL_API_KEY", "MISTRAL_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "not-this-one")
    provider = MistralProvider()
    assert isinstance(provider, Provider) and provider.name == "mistral" and provider._api_key is None
    assert provider.base_url == "https://api.mistral.ai" and provider.results_retention == 24 * 3600
    assert provider.limits.max_requests == 100_000 and provider.limits.max_bytes < 512_000_000
    monkeypatch.setenv("MISTRAL_API_KEY", "m-key")
    monkeypatch.setenv("MISTRAL_BASE_URL", "http://127.0.0.1:9/")
    made = create_provider("mistral", default_model=MODEL)
    assert isinstance(made, MistralProvider) and made._api_key == "m-key" and made.base_url == "http://127.0.0.1:9"
    rebuilt = create_provider("mistral", **made.options())
    assert isinstance(rebuilt, MistralProvider) and rebuilt.options() == made.options()
    assert SECRET not in repr(MistralProvider(api_key=SECRET))


def test_openai_bodies_go_nearly_as_they_are() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 9, "seed": 4,
            "user": "u-1", "store": False, "logit_bias": {}, "response_format": {"type": "json_object"}, "n": 2}
    assert mistral_body("/v1/chat/completions", body) == {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9, "random_seed": 4,
        "response_format": {"type": "json_object"}, "n": 2}
    assert mistral_body("/v1/embeddings", {"model": "mistral-embed", "input": ["a"], "dimensions": 8}) == {
        "input": ["a"], "output_dimension": 8}
    assert mistral_body("/v1/ocr", {"model": "mistral-ocr-latest", "document": {"type": "document_url"}}) == {
        "document": {"type": "document_url"}}
    for bad, field in (({"logit_bias": {"1": 5}}, "body.logit_bias"), ({"modalities": ["audio"]}, "body.modalities"),
                       ({"frobnicate": 1}, "body.frobnicate")):
        with pytest.raises(UnsupportedFeatureError) as caught:
            mistral_body("/v1/chat/completions", {"messages": [], **bad})
        assert caught.value.field == field
    with pytest.raises(ValidationError, match="not both"):
        mistral_body("/v1/chat/completions", {"max_tokens": 1, "max_completion_tokens": 2})


def test_check_and_job_options() -> None:
    provider = MistralProvider(api_key=SECRET)
    provider.check(chat("a", "hi"))
    for request, field in (
        (Request(custom_id="x", url="/v1/responses", body={"model": MODEL}), "url"),
        (Request(custom_id="x", body={"messages": []}), "body.model"),
        (chat("x", "hi", stream=True), "body.stream"),
    ):
        with pytest.raises(ValidationError) as caught:
            provider.check(request)
        assert caught.value.field == field
    native = Request(custom_id="n", body={"messages": [{"role": "user", "content": "hi"}]})
    MistralProvider(api_key=SECRET, default_model=MODEL).check(native)  # the model comes from the job
    assert MistralProvider(default_model=MODEL).model_of(native) == MODEL
    assert (timeout_hours("24h"), timeout_hours("2d")) == (24, 48)
    with pytest.raises(ValidationError) as window:
        provider.check_job_options("90m", {})
    assert window.value.field == "completion_window"
    with pytest.raises(ValidationError) as reserved:
        provider.check_job_options("24h", {"asyncbatch_token": "x"})
    assert reserved.value.field == "metadata.asyncbatch_token"


def test_encode_line() -> None:
    provider = MistralProvider(api_key=SECRET)
    wire = provider.wire_id("a" * 500, 3, "fedcba9876543210" * 2)
    line = json.loads(provider.encode_line(wire, "/v1/chat/completions",
                                           msgspec.json.encode(chat("a", "hi", max_completion_tokens=5).body)))
    assert line == {"custom_id": "fedcba9876543210-3",
                    "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}}


@pytest.mark.parametrize("inline", [True, False])
async def test_lifecycle_inline_or_file(
    emu: Emulator, provider: MistralProvider, spool_dir: Path, workdir: Path, inline: bool
) -> None:
    provider.inline_max_requests = 10 if inline else 0
    requests = [chat("a", "one"), chat("b", "two [[fail:429]]"), chat("c", "three [[fail:400]]"), chat("d", "four")]
    shard = write_shard(provider, spool_dir, requests, metadata={"team": "x"})
    file_id = await provider.upload(shard)
    assert (file_id is None) is inline
    created = await provider.create(shard, file_id)
    assert created.token == shard.token and created.status is BatchStatus.VALIDATING
    ended = await until_ended(provider, created)
    assert ended.status is BatchStatus.COMPLETED and ended.counts == {"total": 4, "completed": 2, "failed": 2}
    assert ended.output_file_id and ended.error_file_id
    job = emu.ledger.batches_created("mistral")[0]
    assert job.metadata == {"team": "x", "asyncbatch_token": shard.token}
    lines = await collect(provider, ended, workdir)
    wire = {r.custom_id: provider.wire_id(r.custom_id, i, shard.token) for i, r in enumerate(requests, start=1)}
    assert set(lines) == set(wire.values())
    ok = lines[wire["a"]]
    assert ok.outcome is Outcome.SUCCEEDED and ok.model == MODEL and ok.usage is not None and ok.usage.input_tokens
    assert (lines[wire["b"]].outcome, lines[wire["b"]].status_code) == (Outcome.ERRORED, 429)
    assert lines[wire["c"]].status_code == 400 and lines[wire["c"]].error_message
    sent = emu.sent_requests(created.id)
    assert all("model" not in s["body"] for s in sent)  # the model went to the job


async def test_inline_outputs_when_there_are_no_files(tmp_path: Path, spool_dir: Path) -> None:
    """A job whose results come only as ``outputs`` (inline jobs may have no files)."""
    from aiohttp import web
    from openai_support import json_handler, stub_host

    outputs = [{"id": "o", "custom_id": "k-1", "response": {"status_code": 200, "body": {"model": MODEL}},
                "error": None},
               {"custom_id": "k-2", "error": {"message": "boom", "code": "internal"}}]
    job = {"id": "j", "status": "SUCCESS", "created_at": 1, "outputs": outputs}

    async def get(request: web.Request) -> web.StreamResponse:
        assert request.query.get("inline") == "true"
        return await json_handler(job)(request)

    async with stub_host({"GET /v1/batch/jobs/j": get}) as host, MistralProvider(api_key=SECRET,
                                                                               base_url=host.url) as provider:
        batch = RemoteBatch(id="j", status=BatchStatus.COMPLETED, raw_status="SUCCESS")
        lines = await collect(provider, batch, tmp_path)
    assert lines["k-1"].outcome is Outcome.SUCCEEDED
    assert (lines["k-2"].outcome, lines["k-2"].error_code, lines["k-2"].error_message) == (
        Outcome.FAILED, "internal", "boom")


async def test_cancel(emu: Emulator, provider: MistralProvider, spool_dir: Path, workdir: Path) -> None:
    emu.config.complete_after, emu.config.cancel_after = 100, 5
    shard = write_shard(provider, spool_dir, [chat(f"r{i}", f"q {i}") for i in range(4)])
    created = await provider.create(shard, await provider.upload(shard))
    emu.clock.advance(50)
    cancelling = await provider.cancel(created.id)
    assert cancelling.status is BatchStatus.CANCELLING and cancelling.cancel_requested
    emu.clock.advance(5)
    cancelled = await provider.retrieve(created.id)
    assert cancelled.status is BatchStatus.CANCELLED
    assert len(await collect(provider, cancelled, workdir)) == 2


async def test_timeout_exceeded_is_expired(emu: Emulator, provider: MistralProvider, spool_dir: Path) -> None:
    shard = write_shard(provider, spool_dir, [chat("a", "fine"), chat("b", "[[expire]]")])
    ended = await until_ended(provider, await provider.create(shard, await provider.upload(shard)))
    assert (ended.status, ended.raw_status) == (BatchStatus.EXPIRED, "TIMEOUT_EXCEEDED")


@pytest.mark.parametrize("skew", [-5 * 3600.0, 3 * 86400.0])
async def test_find_after_a_lost_create_reply(
    emu: Emulator, provider: MistralProvider, spool_dir: Path, skew: float
) -> None:
    emu.clock.advance(skew)
    other = write_shard(provider, spool_dir, [chat("o", "other")], shard_id=2)
    await provider.create(other, await provider.upload(other))
    emu.config.faults = {"mistral_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)}
    shard = write_shard(provider, spool_dir, [chat("a", "mine")])
    with pytest.raises(ConnectionFailedError):
        await provider.create(shard, await provider.upload(shard))
    made = [b for b in emu.ledger.batches_created("mistral")
            if (b.metadata or {}).get("asyncbatch_token") == shard.token]
    found = await provider.find(shard)
    assert found is not None and [found.id] == [b.id for b in made] and found.token == shard.token
    assert await provider.find(shard, exclude={found.id}) is None
    assert await provider.find(write_shard(provider, spool_dir, [chat("z", "none")], shard_id=9)) is None


async def test_results_are_gone_after_24h(emu: Emulator, provider: MistralProvider, spool_dir: Path,
                                          workdir: Path) -> None:
    shard = write_shard(provider, spool_dir, [chat("a", "hi")])
    ended = await until_ended(provider, await provider.create(shard, await provider.upload(shard)))
    emu.clock.advance(24 * 3600 + 1)
    with pytest.raises(NotFoundError):
        await collect(provider, ended, workdir)


async def test_injected_faults_are_retried_and_a_cut_download_is_retryable(
    emu: Emulator, provider: MistralProvider, spool_dir: Path, workdir: Path
) -> None:
    provider.inline_max_requests = 0
    emu.config.faults = {
        "mistral_upload": FaultSpec(rate_503=1.0, max_faults=1),
        "mistral_create": FaultSpec(rate_429=1.0, retry_after=0.01, max_faults=1),
        "mistral_read": FaultSpec(rate_500=1.0, max_faults=2),
    }
    shard = write_shard(provider, spool_dir, [chat("a", "hi"), chat("b", "there")])
    ended = await until_ended(provider, await provider.create(shard, await provider.upload(shard)))
    assert sorted(f.kind for f in emu.ledger.faults) == ["429", "500", "500", "503"]
    emu.config.faults = {"mistral_download": FaultSpec(truncate_rate=1.0, max_faults=1)}
    with pytest.raises(ConnectionFailedError):
        await collect(provider, ended, workdir)
    assert len(await collect(provider, ended, workdir)) == 2


async def test_errors_read_mistrals_envelope(emu: Emulator, provider: MistralProvider) -> None:
    with pytest.raises(NotFoundError) as caught:
        await provider.retrieve("no-such-job")
    assert "Batch job no-such-job not found." in str(caught.value) and caught.value.code == "404"
    assert caught.value.type == "invalid_request_error"
