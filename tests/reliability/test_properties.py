"""Property-based tests (hypothesis) of what stands between arbitrary input and the store: the JSONL reader,
the validator and planner, and the OpenAI -> Anthropic translation.

Whatever bytes or objects come in, the only failure is a ``ValidationError`` (typed, with a line); whatever
is accepted comes out intact; and planning puts every request in exactly one shard within the limits.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from asyncbatch.errors import JSONLError, ValidationError
from asyncbatch.jsonl import BOM, iter_lines, read_chunks
from asyncbatch.model import Job, JobStatus, Request
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.anthropic_translate import message_to_chat_completion, translate
from asyncbatch.providers.base import ShardLimits
from asyncbatch.providers.openai import OpenAIProvider
from asyncbatch.store import NewRequest, SQLiteStore
from asyncbatch.validation import Validator
from tests.helpers import API_KEY, plan_all

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPENAI = OpenAIProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1")
ANTHROPIC = AnthropicProvider(api_key=API_KEY, base_url="http://127.0.0.1:9")

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False,
                         allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)


# --- the JSONL reader ------------------------------------------------------------------------------------

content_lines = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")) \
    .filter(lambda b: b.strip() != b"" and not b.startswith(BOM))


def write(data: bytes) -> Path:
    handle = tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False)  # noqa: SIM115 - removed by the caller
    with handle:
        handle.write(data)
    return Path(handle.name)


@PROPERTY
@given(st.lists(content_lines, max_size=30), st.sampled_from([b"\n", b"\r\n"]), st.integers(0, 3),
       st.booleans())
def test_reader_yields_every_line_with_its_number(
    lines: list[bytes], ending: bytes, trailing_blanks: int, last_newline: bool
) -> None:
    data = ending.join(lines) + (ending if last_newline and lines else b"") + b"\n" * trailing_blanks
    path = write(data)
    try:
        got = list(iter_lines(path))
    finally:
        path.unlink()
    assert got == list(enumerate(lines, start=1))


@PROPERTY
@given(st.lists(content_lines, min_size=2, max_size=20), st.data())
def test_a_blank_line_inside_is_reported_at_its_number(lines: list[bytes], data: st.DataObject) -> None:
    at = data.draw(st.integers(1, len(lines) - 1))
    blank = data.draw(st.sampled_from([b"", b" ", b"\t", b" \r"]))
    path = write(b"\n".join([*lines[:at], blank, *lines[at:]]) + b"\n")
    try:
        with pytest.raises(JSONLError) as info:
            list(iter_lines(path))
    finally:
        path.unlink()
    assert info.value.line == at + 1


@PROPERTY
@given(st.lists(st.integers(1, 60), min_size=1, max_size=20), st.integers(10, 40))
def test_a_line_over_the_limit_is_reported_and_shorter_ones_pass(sizes: list[int], limit: int) -> None:
    path = write(b"".join(b"x" * n + b"\n" for n in sizes))
    try:
        over = next((i for i, n in enumerate(sizes, start=1) if n > limit), None)
        if over is None:
            assert [len(line) for _, line in iter_lines(path, max_line_bytes=limit)] == sizes
        else:
            with pytest.raises(JSONLError) as info:
                list(iter_lines(path, max_line_bytes=limit))
            assert info.value.line == over
    finally:
        path.unlink()


@PROPERTY
@given(st.lists(content_lines, max_size=40), st.integers(1, 7))
def test_chunked_reading_is_the_same_reading(lines: list[bytes], chunk: int) -> None:
    path = write(b"\n".join(lines) + b"\n")

    async def chunks() -> list[tuple[int, bytes]]:
        return [item async for part in read_chunks(path, chunk_lines=chunk) for item in part]

    try:
        assert anyio.run(chunks) == list(iter_lines(path))
    finally:
        path.unlink()


# --- the validator ---------------------------------------------------------------------------------------

custom_ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=80) \
    .filter(lambda s: s.strip() != "")
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@PROPERTY
@given(st.binary(max_size=200), st.sampled_from([OPENAI, ANTHROPIC]))
def test_any_bytes_are_accepted_or_refused_with_a_typed_error(raw: bytes, provider: Any) -> None:
    try:
        Validator(provider, None).from_line(7, raw)
    except ValidationError as exc:
        assert exc.line == 7


@PROPERTY
@given(st.dictionaries(st.sampled_from(["custom_id", "method", "url", "body", "params", "x"]), json_values,
                       max_size=5), st.sampled_from([OPENAI, ANTHROPIC]))
def test_any_object_is_accepted_or_refused_with_a_typed_error(item: dict[str, Any], provider: Any) -> None:
    for how in ("line", "object"):
        try:
            if how == "line":
                Validator(provider, None).from_line(3, json.dumps(item).encode())
            else:
                Validator(provider, None).from_request(3, item)
        except ValidationError as exc:
            assert exc.line == 3


@PROPERTY
@given(custom_ids, texts, st.sampled_from(["gpt-5.4-mini", "gpt-5.4-nano"]), st.dictionaries(
    st.sampled_from(["temperature", "seed", "metadata", "user"]), json_scalars, max_size=3))
def test_a_valid_line_is_stored_exactly_as_given(custom_id: str, text: str, model: str,
                                                  extra: dict[str, Any]) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}], **extra},
                      ensure_ascii=False).encode()
    line = b'{"custom_id": ' + json.dumps(custom_id).encode() + b', "method": "POST", "url": ' \
        b'"/v1/chat/completions", "body": ' + body + b"}"
    request = Validator(OPENAI, "/v1/chat/completions").from_line(1, line)
    assert (request.custom_id, request.url, request.model, request.body) == (
        custom_id, "/v1/chat/completions", model, body)
    assert request.size >= len(body)


# Objects as lists of (key, value) pairs, keys from a small alphabet so that some repeat; strings full of the
# characters the repeated-key check counts (quotes, colons, escapes of both, spaces).
tricky_text = st.text(alphabet='ab":\\ \u00e9', max_size=8)
pair_keys = st.sampled_from(["a", "b", "mod\"el", "k:", ":", "\u00e9"])
pair_values = st.recursive(
    st.one_of(st.integers(-5, 5), tricky_text, st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(tuple),
                            st.lists(st.tuples(pair_keys, inner), max_size=3)),
    max_leaves=8,
)


def encode_pairs(value: Any, colon: str, comma: str, escapes: bool) -> str:
    """JSON text of ``value``, where a list is an object's pairs (repeats kept) and a tuple an array; with
    ``escapes``, non-ASCII text and every colon inside a string are written as ``\\u`` escapes."""
    if isinstance(value, list):
        return "{" + comma.join(encode_pairs(k, colon, comma, escapes) + colon + encode_pairs(v, colon, comma,
                                escapes) for k, v in value) + "}"
    if isinstance(value, tuple):
        return "[" + comma.join(encode_pairs(v, colon, comma, escapes) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=escapes)
    return text.replace(":", "\\u003a") if escapes and isinstance(value, str) else text


def repeats(value: Any) -> bool:
    if isinstance(value, list):
        keys = [k for k, _ in value]
        return len(set(keys)) < len(keys) or any(repeats(v) for _, v in value)
    return isinstance(value, tuple) and any(repeats(v) for v in value)


@PROPERTY
@given(st.lists(st.tuples(pair_keys, pair_values), max_size=4), st.sampled_from([":", ": ", " :", "\t: "]),
       st.sampled_from([",", ", "]), st.booleans(), st.sampled_from(["", "custom_id", "url"]))
def test_a_key_given_twice_anywhere_is_refused_and_only_then(
    extra: list[tuple[str, Any]], colon: str, comma: str, escapes: bool, top_twice: str
) -> None:
    body = [("model", "gpt-5.4-mini"), ("input", "hi"), *extra]
    top: list[tuple[str, Any]] = [("custom_id", "c"), ("method", "POST"), ("url", "/v1/responses")]
    if top_twice:
        top.insert(0, (top_twice, dict(top)[top_twice]))
    line = encode_pairs([*top, ("body", body)], colon, comma, escapes).encode()
    expected = repeats(body) or bool(top_twice)
    try:
        Validator(OPENAI, None).from_line(1, line)
        refused = False
    except JSONLError as exc:
        refused = "appears twice" in exc.reason
        assert refused or not expected, exc
    except ValidationError:
        refused = False  # refused for something else (a non-string value where one is needed): fine
    event(f"repeated: {expected}")
    assert refused == expected, line


# --- the planner -----------------------------------------------------------------------------------------

stored_requests = st.lists(st.tuples(st.sampled_from(["openai", "anthropic"]),
                                     st.sampled_from(["/v1/chat/completions", "/v1/embeddings"]),
                                     st.sampled_from(["m1", "m2", None]), st.integers(1, 500)),
                           min_size=1, max_size=120)


@PROPERTY
@given(stored_requests, st.integers(1, 40), st.integers(1, 3000))
def test_planning_puts_every_request_in_exactly_one_shard_within_the_limits(
    requests: list[tuple[str, str, str | None, int]], max_requests: int, max_bytes: int
) -> None:
    limits = ShardLimits(max_requests=max_requests, max_bytes=max_bytes)
    job = Job(id="job", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
              metadata={}, status=JobStatus.OPEN, created_at=0.0, updated_at=0.0)

    async def plan() -> tuple[list[Any], list[tuple[int, str, str, str | None, int]]]:
        store = SQLiteStore(":memory:")
        await store.open()
        try:
            async def chunks() -> Any:
                yield [NewRequest(custom_id=f"c{i}", route=route, url=url, model=model, body=b"{}", size=size,
                                  line=i + 1)
                       for i, (route, url, model, size) in enumerate(requests)]

            await store.create_job(job, chunks())
            shards = await plan_all(store, job.id, limits, lambda cid, rid, token: cid)
            members = list(await store.db.execute_fetchall(
                "SELECT m.shard_id, r.custom_id, r.route, r.url, r.model, r.size FROM shard_members m "
                "JOIN requests r ON r.rid = m.rid"))
            again = await plan_all(store, job.id, limits, lambda cid, rid, token: cid)
            assert again == []  # nothing is left pending
            return shards, [tuple(m) for m in members]
        finally:
            await store.close()

    shards, members = anyio.run(plan)
    assert sorted(cid for _, cid, *_ in members) == sorted(f"c{i}" for i in range(len(requests)))
    by_shard: dict[int, list[tuple[str, str, str | None, int]]] = {}
    for shard_id, _, route, url, model, size in members:
        by_shard.setdefault(shard_id, []).append((route, url, model, size))
    assert set(by_shard) == {s.id for s in shards}
    for shard in shards:
        inside = by_shard[shard.id]
        assert {(route, url, model) for route, url, model, _ in inside} == {(shard.route, shard.endpoint, shard.model)}
        assert len(inside) == shard.request_count <= max_requests
        total = sum(size for *_, size in inside)
        assert total == shard.bytes
        assert total <= max_bytes or len(inside) == 1  # only a request larger than the limit goes alone
    groups = {(route, url, model) for route, url, model, _ in requests}
    assert {(s.route, s.endpoint, s.model) for s in shards} == groups  # one shard or more per group


# --- the translation -------------------------------------------------------------------------------------

chat_fields = st.sampled_from(["model", "messages", "max_tokens", "temperature", "top_p", "stop", "n", "tools",
                               "tool_choice", "response_format", "stream", "user", "logprobs", "seed", "x"])
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot"])},
    optional={"content": st.one_of(texts, st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio"])},
        optional={"text": texts, "image_url": st.fixed_dictionaries({"url": st.text(max_size=30)})}),
        max_size=3), json_values),
        "tool_calls": json_values, "tool_call_id": st.text(max_size=5), "name": json_values}), max_size=4)


@PROPERTY
@given(st.dictionaries(chat_fields, json_values, max_size=6), messages, st.booleans())
def test_translation_accepts_or_refuses_any_body_with_a_typed_error(
    body: dict[str, Any], conversation: list[dict[str, Any]], as_bytes: bool
) -> None:
    body = {"model": "claude-haiku-4-5", **body}
    if "messages" not in body or not isinstance(body["messages"], list):
        body["messages"] = conversation
    try:
        params = translate(json.dumps(body).encode() if as_bytes else body)
    except ValidationError as exc:
        assert exc.field is not None and exc.field.startswith("body"), exc
        event("refused")
        return
    event("translated")
    encoded = msgspec.json.encode(params)
    native = json.loads(encoded)
    ANTHROPIC.check(Request(custom_id="x", url="/v1/messages", body=native))  # passes our own native check
    assert native["max_tokens"] >= 1 and native["messages"]
    line = ANTHROPIC.encode_line("wire-1", "/v1/chat/completions", json.dumps(body).encode())
    assert json.loads(line) == {"custom_id": "wire-1", "params": native}


@PROPERTY
@given(json_values, st.dictionaries(st.sampled_from(["id", "type", "role", "model", "content", "stop_reason",
                                                     "usage"]), json_values, max_size=7))
def test_any_message_converts_or_is_refused_with_a_typed_error(content: Any, message: dict[str, Any]) -> None:
    message.setdefault("content", content)
    try:
        completion = message_to_chat_completion(message)
    except ValidationError:
        event("refused")
        return
    event("converted")
    assert completion["object"] == "chat.completion" and len(completion["choices"]) == 1
    json.dumps(completion)
