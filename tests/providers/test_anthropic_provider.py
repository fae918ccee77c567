"""AnthropicProvider: validation, wire ids and encoding, then real runs over loopback.

Full lifecycles, faults and reconciliation run against the emulator; the exact bytes and headers of a
create, and result lines the emulator does not produce (every error type, unknown result types), are
checked on a recording stub host. Both are real aiohttp servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from anthropic.types import Message
from openai_support import FAST_RETRY, json_handler, stub_host, until_ended, write_shard

from asyncbatch.emulator import Emulator, FaultSpec
from asyncbatch.errors import (
    AuthenticationError,
    ConnectionFailedError,
    NotFoundError,
    ProviderError,
    TransientError,
    UnsupportedFeatureError,
    ValidationError,
)
from asyncbatch.model import BatchStatus, Outcome, Request, ShardInfo, Usage
from asyncbatch.providers import _http as http_module
from asyncbatch.providers import anthropic as anthropic_module
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.anthropic_translate import to_messages_params
from asyncbatch.providers.base import Provider, RemoteBatch, ResultLine

SECRET = "sk-ant-test-DO-NOT-LEAK-0123456789"
MODEL = "claude-haiku-4-5"
WIRE_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def chat(custom_id: str, text: str, **body: Any) -> Request:
    return Request(
        custom_id=custom_id, body={"model": MODEL, "messages": [{"role": "user", "content": text}], **body}
    )


def native(custom_id: str, text: str, max_tokens: int = 64) -> Request:
    params = {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}
    return Request(custom_id=custom_id, url="/v1/messages", body=params)


async def collect(provider: AnthropicProvider, batch: RemoteBatch, workdir: Path) -> list[ResultLine]:
    return [line async for line in provider.results(batch, workdir)]


# --- construction, validation, encoding (no I/O) ---------------------------------------------------------


def test_satisfies_provider_protocol_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    provider = AnthropicProvider()
    assert isinstance(provider, Provider)
    assert provider.name == "anthropic"
    assert provider.base_url == "https://api.anthropic.com"
    assert provider.limits.max_requests == 100_000
    assert 240_000_000 < provider.limits.max_bytes < 256_000_000
    assert provider.visibility_grace >= 30
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/")
    assert AnthropicProvider().base_url == "http://127.0.0.1:9"
    assert AnthropicProvider(base_url="http://127.0.0.1:8").base_url == "http://127.0.0.1:8"


def test_repr_never_shows_the_key() -> None:
    provider = AnthropicProvider(api_key=SECRET)
    assert repr(provider) == "AnthropicProvider(base_url='https://api.anthropic.com')"
    assert SECRET not in str(provider)


def test_check_accepts_chat_and_native_requests() -> None:
    provider = AnthropicProvider()
    provider.check(chat("a", "hi", max_tokens=10, temperature=0.3))
    provider.check(native("b", "hi"))
    assert provider.model_of(chat("a", "hi")) == MODEL
    assert provider.model_of(native("b", "hi")) == MODEL
    assert provider.model_of(Request(custom_id="c", body={"model": 3})) is None


@pytest.mark.parametrize(
    ("request_", "error", "field"),
    [
        (
            Request(custom_id="a", url="/v1/embeddings", body={"model": "m", "input": "x"}),
            ValidationError,
            "url",
        ),
        (Request(custom_id="a", method="GET", body={"model": "m"}), ValidationError, "method"),
        (chat("a", "hi", n=3), UnsupportedFeatureError, "body.n"),
        (chat("a", "hi", logprobs=True), UnsupportedFeatureError, "body.logprobs"),
        (
            Request(custom_id="a", body={"messages": [{"role": "user", "content": "x"}]}),
            ValidationError,
            "body.model",
        ),
        (
            Request(custom_id="a", url="/v1/messages", body={"model": "m", "messages": []}),
            ValidationError,
            "body.messages",
        ),
        (native("a", "hi", max_tokens=0), ValidationError, "body.max_tokens"),
        (
            Request(custom_id="a", url="/v1/messages", body={"model": "m", "messages": [{}]}),
            ValidationError,
            "body.max_tokens",
        ),
        (
            Request(
                custom_id="a",
                url="/v1/messages",
                body={"model": "m", "max_tokens": 5, "messages": [{}], "stream": True},
            ),
            ValidationError,
            "body.stream",
        ),
    ],
)
def test_check_rejects_naming_the_field(request_: Request, error: type[ValidationError], field: str) -> None:
    with pytest.raises(error) as caught:
        AnthropicProvider().check(request_)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "custom_id",
    ["row-1", "a.b.c", "x" * 500, "caf\u00e9/\u00fcber \u2603", "", "with space", "ends-with-newline\n"],
)
def test_wire_ids_match_anthropics_pattern_and_carry_the_token(custom_id: str) -> None:
    provider = AnthropicProvider()
    token = uuid.uuid4().hex
    for rid in (1, 42, 2**63 - 1):
        wire_id = provider.wire_id(custom_id, rid, token)
        assert WIRE_ID.match(wire_id)
        assert wire_id == f"{token[:16]}-{rid}"


def test_encode_line_translates_chat_bodies() -> None:
    provider = AnthropicProvider(default_max_tokens=256)
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "caf\u00e9?"}],
        "stop": "END",
    }
    line = provider.encode_line("tok-1", "/v1/chat/completions", msgspec.json.encode(body))
    assert b"\n" not in line
    assert json.loads(line) == {
        "custom_id": "tok-1",
        "params": {
            "model": MODEL,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "caf\u00e9?"}],
            "system": "Be brief.",
            "stop_sequences": ["END"],
        },
    }
    assert json.loads(line)["params"] == to_messages_params(body, default_max_tokens=256)


def test_encode_line_splices_native_params_as_stored() -> None:
    params = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"\xc3\xa9"}],"top_k":3}'
    line = AnthropicProvider().encode_line("tok-2", "/v1/messages", params)
    assert line == b'{"custom_id":"tok-2","params":' + params + b"}"
    with pytest.raises(ValidationError) as caught:
        AnthropicProvider().encode_line("tok-3", "/v1/embeddings", b"{}")
    assert caught.value.field == "url"


async def test_missing_key_is_reported_at_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    provider = AnthropicProvider(base_url="http://127.0.0.1:9")  # building needs no key
    with pytest.raises(AuthenticationError, match="ANTHROPIC_API_KEY"):
        await provider.retrieve("msgbatch_1")
    await provider.aclose()


# --- wire details on a recording stub host ---------------------------------------------------------------


def batch_json(batch_id: str, status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    counts = {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": extra.pop("request_counts", counts),
        "created_at": "2026-11-20T10:00:00.123456Z",
        "expires_at": "2026-11-21T10:00:00.123456Z",
        "ended_at": None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": None,
        **extra,
    }


@pytest.mark.parametrize("block", [1, 7, 1 << 20])  # spool blocks end anywhere, on a newline or not
async def test_create_streams_the_exact_body_with_the_right_headers(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setattr(http_module, "BODY_BLOCK", block)
    requests = [chat("a.1", "one"), native("b" * 100, "two"), chat("c", "three", max_completion_tokens=9)]
    async with stub_host({"POST /v1/messages/batches": json_handler(batch_json("msgbatch_01"))}) as host:
        provider = AnthropicProvider(base_url=host.url, betas=("beta-one", "beta-two"))
        shard = write_shard(provider, spool_dir, requests)
        assert await provider.upload(shard) is None
        remote = await provider.create(shard)
        await provider.aclose()
    assert remote == RemoteBatch(
        id="msgbatch_01",
        status=BatchStatus.IN_PROGRESS,
        raw_status="in_progress",
        counts={"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0, "total": 2},
        created_at=1_795_168_800.123456,  # 2026-11-20T10:00:00.123456Z
    )
    [seen] = host.seen
    assert seen.headers["x-api-key"] == SECRET
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "beta-one,beta-two"
    assert seen.headers["content-type"] == "application/json"
    spooled = Path(shard.spool_path).read_bytes().splitlines()
    assert seen.body == b'{"requests":[' + b",".join(spooled) + b"]}"  # the spool file's lines, as they are
    token = shard.token[:16]
    assert json.loads(seen.body) == {
        "requests": [
            {
                "custom_id": f"{token}-1",
                "params": {
                    "model": MODEL,
                    "max_tokens": 4096,
                    "messages": [{"role": "user", "content": "one"}],
                },
            },
            {
                "custom_id": f"{token}-2",
                "params": {
                    "model": MODEL,
                    "max_tokens": 64,
                    "messages": [{"role": "user", "content": "two"}],
                },
            },
            {
                "custom_id": f"{token}-3",
                "params": {
                    "model": MODEL,
                    "max_tokens": 9,
                    "messages": [{"role": "user", "content": "three"}],
                },
            },
        ]
    }


@pytest.mark.parametrize(
    ("batch", "status", "output"),
    [
        (
            batch_json("b1", "canceling", cancel_initiated_at="2026-11-20T10:01:00Z"),
            BatchStatus.CANCELLING,
            None,
        ),
        (
            batch_json("b1", "ended", results_url="{host}/v2/results/b1"),  # read, not hard-coded
            BatchStatus.COMPLETED,
            "/v2/results/b1",
        ),
        (
            batch_json(
                "b1",
                "ended",
                results_url="https://elsewhere.example/r",
                cancel_initiated_at="2026-11-20T10:01:00Z",
            ),
            BatchStatus.CANCELLED,
            "/v1/messages/batches/b1/results",
        ),
        (batch_json("b1", "ended"), BatchStatus.COMPLETED, "/v1/messages/batches/b1/results"),
    ],
)
async def test_batch_states_are_normalised(
    batch: dict[str, Any], status: BatchStatus, output: str | None
) -> None:
    async def retrieve(request: web.Request) -> web.StreamResponse:
        payload = json.dumps(batch).replace("{host}", f"http://{request.host}")
        return web.Response(text=payload, content_type="application/json")

    async with stub_host({"GET /v1/messages/batches/b1": retrieve}) as host:
        provider = AnthropicProvider(api_key=SECRET, base_url=host.url)
        remote = await provider.retrieve("b1")
        await provider.aclose()
    assert remote.status is status
    assert remote.raw_status == batch["processing_status"]
    assert remote.output_file_id == output
    assert remote.cancel_requested == (batch["cancel_initiated_at"] is not None)


ERRORS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
    "brand_new_error": None,
}


def results_jsonl() -> bytes:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Yes."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 19,
            "output_tokens": 3,
            "cache_read_input_tokens": 7,
            "service_tier": "batch",
        },
    }
    lines = [{"custom_id": "t-1", "result": {"type": "succeeded", "message": message}}]
    for i, error_type in enumerate(ERRORS, start=2):
        envelope = {
            "type": "error",
            "error": {"type": error_type, "message": f"bad {i}"},
            "request_id": f"req_{i}",
        }
        lines.append({"custom_id": f"t-{i}", "result": {"type": "errored", "error": envelope}})
    lines += [
        {"custom_id": "t-90", "result": {"type": "expired"}},
        {"custom_id": "t-91", "result": {"type": "canceled"}},
        {"custom_id": "t-92", "result": {"type": "postponed"}},
    ]
    return b"".join(msgspec.json.encode(line) + b"\n" for line in lines)


async def test_every_result_type_is_normalised(workdir: Path) -> None:
    raw = results_jsonl()

    async def results(request: web.Request) -> web.StreamResponse:
        return web.Response(body=raw, content_type="application/binary")

    async with stub_host({"GET /v1/messages/batches/b1/results": results}) as host:
        provider = AnthropicProvider(api_key=SECRET, base_url=host.url)
        batch = RemoteBatch(
            id="b1",
            status=BatchStatus.COMPLETED,
            raw_status="ended",
            output_file_id=f"{host.url}/v1/messages/batches/b1/results",
        )
        lines = await collect(provider, batch, workdir)
        await provider.aclose()
    assert list(workdir.iterdir()) == []  # the download is deleted
    first = lines[0]
    assert (first.wire_id, first.outcome, first.status_code, first.model) == (
        "t-1",
        Outcome.SUCCEEDED,
        200,
        MODEL,
    )
    assert first.usage == Usage(input_tokens=26, output_tokens=3, cached_input_tokens=7)
    assert first.body is not None and json.loads(bytes(first.body))["content"][0]["text"] == "Yes."
    errored = lines[1 : 1 + len(ERRORS)]
    assert [(line.error_code, line.status_code) for line in errored] == list(ERRORS.items())
    assert all(line.outcome is Outcome.ERRORED for line in errored)
    assert (errored[0].error_message, errored[0].request_id) == ("bad 2", "req_2")
    assert (
        errored[0].body is not None
        and json.loads(bytes(errored[0].body))["error"]["type"] == "invalid_request_error"
    )
    assert [(line.wire_id, line.outcome, line.error_code) for line in lines[-3:]] == [
        ("t-90", Outcome.EXPIRED, "expired"),
        ("t-91", Outcome.CANCELLED, "canceled"),
        ("t-92", Outcome.FAILED, "postponed"),
    ]


# --- against the emulator --------------------------------------------------------------------------------

KEY = "sk-ant-emu-0123456789"


@pytest.fixture
async def provider(emu: Emulator) -> AsyncIterator[AnthropicProvider]:
    async with AnthropicProvider(api_key=KEY, base_url=emu.anthropic_base_url, retry=FAST_RETRY) as anthropic:
        anthropic.visibility_grace = (
            0.2  # the emulator lists a batch at once; keep find()'s second look short
        )
        yield anthropic


def by_custom_id(shard: ShardInfo, requests: list[Request], lines: list[ResultLine]) -> dict[str, ResultLine]:
    """Results keyed by the user's custom_id, via the rid in the wire id (as the engine maps them)."""
    custom_ids = {f"{shard.token[:16]}-{rid}": r.custom_id for rid, r in enumerate(requests, start=1)}
    return {custom_ids[line.wire_id]: line for line in lines}


ODD_IDS = ["a.b.c", "x" * 100, "caf\u00e9 \u2603/1", 'q"uote\n']
MIXED = [
    chat(ODD_IDS[0], "hello there", max_completion_tokens=40, stop=["\n\n"]),
    chat(ODD_IDS[1], "a longer prompt " * 20, temperature=0.2),
    Request(
        custom_id=ODD_IDS[2],
        body={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather"}}],
        },
    ),
    native(ODD_IDS[3], "native params"),
    chat("bad", "please [[fail:400]]"),
    chat("overloaded", "please [[fail:529]]"),
    chat("late", "please [[expire]]"),
]


async def test_full_cycle(emu: Emulator, provider: AnthropicProvider, spool_dir: Path, workdir: Path) -> None:
    shard = write_shard(provider, spool_dir, MIXED)
    created = await provider.create(shard)
    assert (created.status, created.counts["processing"], created.counts["total"]) == (
        BatchStatus.IN_PROGRESS,
        7,
        7,
    )
    assert abs(created.created_at - time.time()) < 60 and not created.cancel_requested

    sent = emu.sent_requests(created.id)  # exactly what went over the wire
    assert [item["custom_id"] for item in sent] == [f"{shard.token[:16]}-{rid}" for rid in range(1, 8)]
    expected = [r.body if r.url == "/v1/messages" else to_messages_params(r.body) for r in MIXED]
    assert [item["params"] for item in sent] == expected
    assert sent[2]["params"]["system"] == "Answer in JSON." and sent[0]["params"]["max_tokens"] == 40

    batch = await until_ended(provider, created)
    assert batch.status is BatchStatus.COMPLETED and batch.raw_status == "ended"
    assert batch.counts == {
        "processing": 0,
        "succeeded": 4,
        "errored": 2,
        "canceled": 0,
        "expired": 1,
        "total": 7,
    }
    assert batch.output_file_id == f"/v1/messages/batches/{batch.id}/results"  # results_url, host-relative

    results = by_custom_id(shard, MIXED, await collect(provider, batch, workdir))
    assert list(workdir.iterdir()) == []
    assert {k: (r.outcome, r.status_code, r.error_code) for k, r in results.items()} == {
        **{i: (Outcome.SUCCEEDED, 200, None) for i in ODD_IDS},
        "bad": (Outcome.ERRORED, 400, "invalid_request_error"),
        "overloaded": (Outcome.ERRORED, 529, "overloaded_error"),
        "late": (Outcome.EXPIRED, None, "expired"),
    }
    short, long = results[ODD_IDS[0]], results[ODD_IDS[1]]
    assert short.usage is not None and long.usage is not None
    assert long.usage.input_tokens > short.usage.input_tokens > 0 and short.usage.output_tokens > 0
    assert short.model == MODEL and short.body is not None
    message = Message.model_validate_json(bytes(short.body))  # the body is a real Message, kept intact
    assert message.usage.input_tokens == short.usage.input_tokens
    assert results["bad"].body is not None and results["bad"].error_message


async def test_cancel(emu: Emulator, provider: AnthropicProvider, spool_dir: Path, workdir: Path) -> None:
    emu.config.complete_after = 3600
    requests = [chat(f"r{i}", "hi") for i in range(4)]
    shard = write_shard(provider, spool_dir, requests)
    created = await provider.create(shard)
    canceling = await provider.cancel(created.id)
    assert (canceling.status, canceling.raw_status, canceling.cancel_requested) == (
        BatchStatus.CANCELLING,
        "canceling",
        True,
    )
    batch = await until_ended(provider, canceling)
    assert batch.status is BatchStatus.CANCELLED and batch.counts["canceled"] == 4
    results = await collect(provider, batch, workdir)
    assert {(r.outcome, r.error_code) for r in results} == {(Outcome.CANCELLED, "canceled")}
    assert set(by_custom_id(shard, requests, results)) == {r.custom_id for r in requests}


async def test_rate_limits_honour_retry_after(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.config.faults = {
        "anthropic_create": FaultSpec(rate_429=1.0, retry_after=0.1, max_faults=1),
        "anthropic_read": FaultSpec(rate_429=1.0, retry_after=0.2, max_faults=2),
    }
    monkeypatch.setattr(http_module, "BODY_BLOCK", 7)
    shard = write_shard(provider, spool_dir, [chat(f"r{i}", "hi") for i in range(5)])
    started = time.monotonic()
    created = await provider.create(shard)
    assert time.monotonic() - started >= 0.1  # a 429 on create surely created nothing: retried after the hint
    assert len(emu.sent_requests(created.id)) == 5  # the retry streamed the spool file again from its start
    started = time.monotonic()
    assert (await provider.retrieve(created.id)).id == created.id
    assert time.monotonic() - started >= 0.4
    assert [(f.group, f.kind) for f in emu.ledger.faults] == [("anthropic_create", "429")] + [
        ("anthropic_read", "429")
    ] * 2
    assert len(emu.ledger.batches_created()) == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (FaultSpec(rate_500=1.0, max_faults=1), TransientError),
        (FaultSpec(drop_rate=1.0, max_faults=1), ConnectionFailedError),
    ],
)
async def test_ambiguous_create_failures_are_not_retried(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, fault: FaultSpec, error: type[ProviderError]
) -> None:
    """After a 5xx or a dropped connection the batch may exist: the engine must find() before creating
    again, so create() does not retry them itself."""
    emu.config.faults = {"anthropic_create": fault}
    with pytest.raises(error):
        await provider.create(write_shard(provider, spool_dir, [chat("a", "hi")]))
    assert len(emu.ledger.faults) == 1  # one try only


async def test_transient_404_right_after_create(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path
) -> None:
    emu.config.anthropic_404_after_create = 30
    created = await provider.create(write_shard(provider, spool_dir, [chat("a", "hi")]))
    with pytest.raises(NotFoundError):
        await provider.retrieve(created.id)
    assert AnthropicProvider.visibility_grace >= emu.config.anthropic_404_after_create
    emu.clock.advance(31)
    assert (await provider.retrieve(created.id)).status is BatchStatus.COMPLETED


async def test_find_adopts_a_lost_create_and_verifies_ended_ones(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path
) -> None:
    shard = write_shard(provider, spool_dir, [chat("a", "one"), chat("b", "two")])
    emu.config.complete_after = 3600
    emu.config.faults = {"anthropic_create": FaultSpec(drop_after_create_rate=1.0, max_faults=1)}
    with pytest.raises(ConnectionFailedError):
        await provider.create(shard)
    (record,) = emu.ledger.batches_created()  # created, but the reply was lost
    running = await provider.find(shard)  # not ended: adopted on request count and creation time
    assert running is not None and (running.id, running.status) == (record.id, BatchStatus.IN_PROGRESS)

    other_size = write_shard(provider, spool_dir, [chat("e", "five")], shard_id=3)
    assert await provider.find(other_size) is None

    emu.clock.advance(3600)  # an hour later (on both clocks) the batch has ended: its results prove whose it is
    ended = await provider.find(msgspec.structs.replace(shard, created_at=shard.created_at - 3600))
    assert ended is not None and (ended.id, ended.status) == (record.id, BatchStatus.COMPLETED)
    same_size = write_shard(provider, spool_dir, [chat("c", "three"), chat("d", "four")], shard_id=2)
    started = time.monotonic()
    assert await provider.find(same_size) is None  # same count, but the ids carry another token
    assert time.monotonic() - started >= 0.1  # looked twice, visibility_grace apart
    assert len(emu.ledger.batches_created()) == 1


@pytest.mark.parametrize(
    "fault",
    [
        FaultSpec(rate_429=1.0, retry_after=0.05, max_faults=2),
        FaultSpec(rate_503=1.0, max_faults=2),
        FaultSpec(drop_rate=1.0, max_faults=1),
    ],
)
async def test_find_verifies_an_ended_batch_through_the_http_layers_retries(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, fault: FaultSpec
) -> None:
    """Reading the first results line to verify a candidate is a call like any other: retried on 429 (as the
    server asks), 503 and dropped connections, instead of failing the reconciliation at the first fault."""
    shard = write_shard(provider, spool_dir, [chat("a", "one")])
    created = await until_ended(provider, await provider.create(shard))
    emu.config.faults = {"anthropic_results": fault}
    found = await provider.find(shard)
    assert found is not None and (found.id, found.token) == (created.id, shard.token)
    assert len(emu.ledger.faults) == fault.max_faults


async def test_find_skips_an_ended_batch_whose_results_are_gone(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provider, "visibility_grace", 0.0)
    shard = write_shard(provider, spool_dir, [chat("a", "one")])
    batch = await until_ended(provider, await provider.create(shard))
    assert await provider.find(shard) is not None
    emu.config.results_ttl = 60
    emu.clock.advance(120)  # past the results' lifetime: they answer 404 or 410 now
    with pytest.raises(ProviderError) as gone:
        async for _ in provider.results(batch, spool_dir):
            pass
    assert gone.value.status in (404, 410)
    assert await provider.find(shard) is None


async def test_a_running_batch_of_the_same_size_is_waited_for_only_when_made_as_the_create_began(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path
) -> None:
    """Running batches cannot be told apart by ids yet. One created as the shard's create began (on Anthropic's
    clock) may be the shard's and is returned unverified, for the engine to wait on; a stranger's started well
    before is never a candidate, so it holds nothing up, whatever our clock says of Anthropic's."""
    emu.config.complete_after = 3600
    stranger = await provider.create(write_shard(provider, spool_dir, [chat("s", "someone else's")], shard_id=9))
    emu.clock.advance(2 * anthropic_module.UNVERIFIED_WINDOW)  # two minutes later (on both clocks) ...
    first = write_shard(provider, spool_dir, [chat("a", "one")])  # ... this shard's create begins
    assert await provider.find(first) is None  # the stranger's batch is not this shard's
    first_batch = await provider.create(first)
    found = await provider.find(first)
    assert found is not None and found.id == first_batch.id and found.token is None  # unverified: wait on it
    assert found.id != stranger.id


async def test_find_pages_back_to_the_horizon(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anthropic_module, "FIND_PAGE", "2")
    shards = [
        write_shard(provider, spool_dir, [chat(f"r{j}", "hi") for j in range(n)], shard_id=n)
        for n in range(1, 6)
    ]
    for shard in shards:
        await provider.create(shard)
    oldest = await provider.find(shards[0])  # three pages back
    assert oldest is not None and oldest.id == emu.ledger.batches_created()[0].id
    emu.clock.advance(2 * anthropic_module.FIND_MARGIN)  # a shard whose create begins much later
    later = msgspec.structs.replace(shards[0], created_at=time.time())
    assert await provider.find(later) is None  # everything is older than its horizon


async def test_a_cut_results_download_ends_in_a_retryable_error_after_whole_lines_only(
    emu: Emulator, provider: AnthropicProvider, spool_dir: Path, workdir: Path
) -> None:
    """Results are decoded as they stream in: a body cut short yields only the lines that arrived whole, then
    a retryable error (the engine starts over); nothing is written to the work directory."""
    batch = await until_ended(provider, await provider.create(write_shard(provider, spool_dir, MIXED)))
    clean = await collect(provider, batch, workdir)
    emu.config.faults = {"anthropic_results": FaultSpec(truncate_rate=1.0, max_faults=1)}
    received: list[ResultLine] = []
    with pytest.raises(ConnectionFailedError) as info:
        async for line in provider.results(batch, workdir):
            received.append(line)
    assert info.value.retryable
    assert len(received) < len(clean) and received == clean[: len(received)]
    assert [f.kind for f in emu.ledger.faults] == ["truncate"]
    assert await collect(provider, batch, workdir) == clean
    assert list(workdir.iterdir()) == []


async def test_wrong_key_never_leaks(
    emu: Emulator, spool_dir: Path, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emu.config.api_keys = ["sk-ant-the-right-one"]
    caplog.set_level(logging.DEBUG)
    async with AnthropicProvider(
        api_key=SECRET, base_url=emu.anthropic_base_url, retry=FAST_RETRY
    ) as provider:
        shard = write_shard(provider, spool_dir, [chat("a", "hi")])
        batch = RemoteBatch(id="msgbatch_x", status=BatchStatus.COMPLETED, raw_status="ended")
        calls = [
            provider.create(shard),
            provider.find(shard),
            provider.retrieve("msgbatch_x"),
            provider.cancel("msgbatch_x"),
            collect(provider, batch, workdir),
        ]
        for call in calls:
            with pytest.raises(AuthenticationError) as caught:
                await call
            error = caught.value
            assert error.status == 401
            for text in (str(error), repr(error), error.message, repr(provider)):
                assert SECRET not in text
    assert SECRET not in caplog.text
