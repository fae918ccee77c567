"""Bad input corpus: every malformed input is refused before anything is stored or sent.

Each case goes through the Python API (a typed error carrying ``line`` and ``field``) and through the real
command line code (exit status 1 and one line on stderr naming the line and the field). In both, the job
store is byte-for-byte what it was (an earlier job in it untouched), and the emulator that the provider
points at has seen no file and no batch.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from asyncbatch import BatchManager, DuplicateCustomIdError, JSONLError, UnsupportedFeatureError, ValidationError
from asyncbatch.cli import main as cli_main
from asyncbatch.emulator import EmulatorConfig, EmulatorThread
from asyncbatch.providers import create_provider
from tests.helpers import API_KEY

OPENAI_CHAT = {"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": "hi"}]}
CLAUDE_CHAT = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}


def line(custom_id: Any = "x", *, body: Any = None, provider: str = "openai", **fields: Any) -> bytes:
    """One OpenAI batch line as bytes; ``fields`` override or add top-level keys (``None`` drops a key)."""
    base = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": body if body is not None else (CLAUDE_CHAT if provider == "anthropic" else OPENAI_CHAT)}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode()


def chat(provider: str = "anthropic", **extra: Any) -> bytes:
    return line(body={**(CLAUDE_CHAT if provider == "anthropic" else OPENAI_CHAT), **extra}, provider=provider)


class Case(msgspec.Struct, frozen=True):
    """``bad`` replaces line 2 of a three-line file (``whole`` is the whole file instead); the error must be
    ``error`` naming ``line`` and ``field``."""

    name: str
    bad: bytes = b""
    line: int | None = 2
    field: str | None = None
    error: type[Exception] = ValidationError
    provider: str = "openai"
    endpoint: str | None = None
    whole: bytes | None = None


def anthropic(name: str, bad: bytes, field: str, error: type[Exception] = UnsupportedFeatureError) -> Case:
    return Case(name, bad, field=field, error=error, provider="anthropic")


def tools(*messages: dict[str, Any]) -> bytes:
    """An Anthropic job's chat line whose conversation is ``messages`` (tool exchanges), with its tool."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    return chat(messages=[{"role": "user", "content": "hi"}, *messages], tools=[tool])


def calls(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids]}


def result(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": "42"}


def twice(key: bytes, where: bytes = b"") -> bytes:
    """A line with ``key`` given twice, with two values, in the object that starts at ``where`` (the line's own
    by default): the first value is the line's own with ``-2`` appended, the second the line's own."""
    data = line()
    start = data.index(where) + len(where) if where else 0
    head, _, tail = data[start:].partition(b'"' + key + b'": ')
    other = tail[:tail.index(b",")][:-1] + b'-2"'
    return data[:start] + head + b'"' + key + b'": ' + other + b', "' + key + b'": ' + tail


OK1, OK3 = line("ok-1"), line("ok-3")
DEEP = b"[" * 100_000 + b"]" * 100_000

CASES = [
    # --- not JSON, or not one object per line
    Case("broken JSON", b'{"custom_id": "a", "body": {', error=JSONLError),
    Case("truncated object", line()[:-1], error=JSONLError),
    Case("array instead of object", b"[1, 2]", error=JSONLError),
    Case("bare string", b'"hello"', error=JSONLError),
    Case("null", b"null", error=JSONLError),
    Case("two objects on one line", line() + line("y"), error=JSONLError),
    Case("trailing garbage", line() + b" x", error=JSONLError),
    Case("NUL byte after the object", line() + b"\x00", error=JSONLError),
    Case("NaN literal", line(body={"model": "m"}).replace(b'"m"', b'"m", "t": NaN'), error=JSONLError),
    Case("lone surrogate escape", line("a\ud800b"), error=JSONLError),
    Case("nesting 100k deep", line(body={"model": "m", "x": 0}).replace(b"0}", DEEP + b"}"), error=JSONLError),
    Case("non-UTF-8 byte in custom_id", line("a#b").replace(b"#", b"\xff"), error=JSONLError),
    Case("non-UTF-8 bytes in the body", line(body={"model": "m", "t": "#"}).replace(b"#", b"\xc3\x28"),
         field="body", error=JSONLError),
    Case("Latin-1 encoded text", line(body={"model": "m", "t": "caf#"}).replace(b"#", "é".encode("latin-1")),
         field="body", error=JSONLError),
    Case("number out of range in the body", line(body={"model": "m", "t": 0}).replace(b"0}", b"1e400}"),
         field="body"),
    # --- file-level shape
    Case("UTF-8 byte order mark", line=1, error=JSONLError, whole=b"\xef\xbb\xbf" + OK1 + b"\n" + OK3 + b"\n"),
    Case("empty line inside the file", error=JSONLError, whole=OK1 + b"\n\n" + OK3 + b"\n"),
    Case("whitespace-only line inside the file", error=JSONLError, whole=OK1 + b"\n \t \n" + OK3 + b"\n"),
    Case("CR-only line endings", line=1, error=JSONLError, whole=OK1 + b"\r" + OK3 + b"\r"),
    Case("empty file", line=None, whole=b""),
    Case("only blank lines", line=None, whole=b"\n\n  \n"),
    # --- custom_id
    Case("custom_id missing", line(None), field="custom_id"),
    Case("custom_id null", line().replace(b'"x"', b"null"), field="custom_id"),
    Case("custom_id a number", line(7), field="custom_id", error=JSONLError),
    Case("custom_id a list", line(["a"]), field="custom_id", error=JSONLError),
    Case("custom_id empty", line(""), field="custom_id"),
    Case("custom_id blank", line("   "), field="custom_id"),
    Case("custom_id overlong", line("x" * 513), field="custom_id"),
    Case("custom_id with a newline", line("a\nb"), field="custom_id"),
    Case("custom_id duplicate", line("ok-1"), field="custom_id", error=DuplicateCustomIdError),
    # --- method, url, endpoint
    Case("method GET", line(method="GET"), field="method"),
    Case("method a number", line(method=1), field="method", error=JSONLError),
    Case("url of another endpoint", line(url="/v1/embeddings"), field="url", endpoint="/v1/chat/completions"),
    Case("unknown endpoint", line(url="/v1/unknown"), field="url"),
    Case("url a number", line(url=5), field="url", error=JSONLError),
    Case("unknown top-level field", line(extra=1), field="extra", error=JSONLError),
    # --- body
    Case("body missing", line().replace(b', "body": ', b', "x": '), field="x", error=JSONLError),
    Case("body null", line().split(b', "body"')[0] + b', "body": null}', field="body"),
    Case("body a string", line(body="hello"), field="body"),
    Case("body a list", line(body=[1, 2]), field="body"),
    Case("body without model", line(body={"messages": []}), field="body.model"),
    Case("model not a string", line(body={"model": 4, "messages": []}), field="body.model"),
    Case("stream in a batch", chat("openai", stream=True), field="body.stream"),
    Case("model empty", chat("openai", model=""), field="body.model"),
    Case("model blank", chat("openai", model="  "), field="body.model"),
    Case("chat body without messages", line(body={"model": "m"}), field="body.messages"),
    Case("messages not a list", chat("openai", messages="hi"), field="body.messages"),
    Case("messages empty", chat("openai", messages=[]), field="body.messages"),
    Case("a message that is not an object", chat("openai", messages=["hi"]), field="body.messages"),
    Case("embeddings without input", line(url="/v1/embeddings", body={"model": "m"}), field="body.input"),
    Case("embeddings with an empty input", line(url="/v1/embeddings", body={"model": "m", "input": []}),
         field="body.input"),
    Case("moderation without input", line(url="/v1/moderations", body={"model": "m"}), field="body.input"),
    # --- a key given twice: which value counts depends on the parser
    Case("custom_id twice", twice(b"custom_id"), field="custom_id", error=JSONLError),
    Case("url twice", twice(b"url"), field="url", error=JSONLError),
    Case("model twice in the body", twice(b"model", b'"body": '), field="body.model", error=JSONLError),
    Case("role twice in a message", twice(b"role", b'"messages": ['), field="body.messages[0].role",
         error=JSONLError),
    Case("model twice, spaced before the colon", twice(b"model", b'"body": ').replace(b'"model": ', b'"model" : '),
         field="body.model", error=JSONLError),
    Case("model twice, once spelled with escapes", twice(b"model", b'"body": ').replace(b'"model": "g',
                                                                                       b'"mod\\u0065l": "g', 1),
         field="body.model", error=JSONLError),
    # --- mixed providers' formats
    # (a claude-* model routes to Anthropic, where a native line is valid; another model stays with OpenAI)
    Case("Anthropic native line for an OpenAI model",
         json.dumps({"custom_id": "n", "params": {**CLAUDE_CHAT, "model": "gpt-5.4-mini", "max_tokens": 5}}).encode(),
         field="url"),
    Case("params and body on one line",
         json.dumps({"custom_id": "n", "params": CLAUDE_CHAT, "body": OPENAI_CHAT}).encode(), field="params"),
    # --- untranslatable for Anthropic
    anthropic("n=2", chat(n=2), "body.n"),
    anthropic("logprobs", chat(logprobs=True), "body.logprobs"),
    anthropic("audio output", chat(modalities=["text", "audio"]), "body.modalities"),
    anthropic("temperature above 1", chat(temperature=1.5), "body.temperature"),
    anthropic("legacy functions", chat(functions=[{"name": "f"}]), "body.functions"),
    anthropic("audio input part", chat(messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]),
        "body.messages[0].content[0].type"),
    anthropic("unknown chat field", chat(reasoning={"effort": "high"}), "body.reasoning"),
    anthropic("embeddings on Anthropic", line(url="/v1/embeddings", body={"model": "m", "input": "x"}), "url",
              ValidationError),
    anthropic("native params without max_tokens",
              json.dumps({"custom_id": "n", "params": CLAUDE_CHAT}).encode(), "body.max_tokens", ValidationError),
    anthropic("native params with model twice", json.dumps(
        {"custom_id": "n", "params": {**CLAUDE_CHAT, "max_tokens": 5}}).encode().replace(
        b'"model": ', b'"model": "claude-x", "model": ', 1), "params.model", JSONLError),
    anthropic("tool result with no tool call before it", tools(result("call_1")), "body.messages[1].tool_call_id",
              ValidationError),
    anthropic("tool call unanswered before the next user turn", tools(calls("call_1"), {"role": "user",
              "content": "and?"}), "body.messages[1].tool_calls[0].id", ValidationError),
    anthropic("one of two tool calls unanswered", tools(calls("call_1", "call_2"), result("call_1"),
              {"role": "user", "content": "and?"}), "body.messages[1].tool_calls[1].id", ValidationError),
    anthropic("tool result after the next assistant turn", tools(calls("call_1"), result("call_1"),
              {"role": "assistant", "content": "ok"}, result("call_1")), "body.messages[4].tool_call_id",
              ValidationError),
    anthropic("tool call never answered", tools(calls("call_1")), "body.messages[1].tool_calls[0].id",
              ValidationError),
    anthropic("tool call ids repeated", tools(calls("call_1", "call_1"), result("call_1")),
              "body.messages[1].tool_calls", ValidationError),
    anthropic("native params streaming",
              json.dumps({"custom_id": "n", "params": {**CLAUDE_CHAT, "max_tokens": 5, "stream": True}}).encode(),
              "body.stream", ValidationError),
]


def case_file(tmp_path: Path, case: Case) -> Path:
    ok1 = line("ok-1", provider=case.provider)
    ok3 = line("ok-3", provider=case.provider)
    data = case.whole if case.whole is not None else ok1 + b"\n" + case.bad + b"\n" + ok3 + b"\n"
    path = tmp_path / "input.jsonl"
    path.write_bytes(data)
    return path


def dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(EmulatorConfig()) as emu:
        yield emu
        assert emu.ledger.totals().files == 0 and emu.ledger.batches_created() == [], "bad input reached the wire"


def base_url(emu: EmulatorThread, provider: str) -> str:
    return emu.openai_base_url if provider == "openai" else emu.anthropic_base_url


async def store_with_a_job(db: Path, emu: EmulatorThread, provider: str) -> list[str]:
    async with BatchManager(db, provider=create_provider(provider, base_url=base_url(emu, provider),
                                                         api_key=API_KEY)) as bm:
        await bm.submit([json.loads(line("earlier", provider=provider))])
    return dump(db)


def test_the_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_python_api_raises_a_typed_error_naming_line_and_field(
    tmp_path: Path, emulator: EmulatorThread, case: Case
) -> None:
    db = tmp_path / "jobs.db"
    before = await store_with_a_job(db, emulator, case.provider)
    provider = create_provider(case.provider, base_url=base_url(emulator, case.provider), api_key=API_KEY)
    async with BatchManager(db, provider=provider) as bm:
        with pytest.raises(case.error) as info:
            await bm.submit(case_file(tmp_path, case), endpoint=case.endpoint)
    error = info.value
    assert isinstance(error, ValidationError)
    assert (error.line, error.field) == (case.line, case.field), str(error)
    if case.line is not None:
        assert str(error).startswith(f"line {case.line}")
    assert dump(db) == before


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_cli_prints_one_line_naming_line_and_field_and_exits_1(
    tmp_path: Path, emulator: EmulatorThread, case: Case, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    db = tmp_path / "jobs.db"
    before = await store_with_a_job(db, emulator, case.provider)
    args = ["submit", str(case_file(tmp_path, case)), "--db", str(db), "--provider", case.provider,
            "--base-url", base_url(emulator, case.provider)]
    if case.endpoint:
        args += ["--endpoint", case.endpoint]
    code = await anyio.to_thread.run_sync(cli_main, args)
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("asyncbatch: error: "), err
    if case.line is not None:
        assert f"line {case.line}" in err, err
    if case.field is not None:
        assert f"field '{case.field}'" in err, err
    assert dump(db) == before


def deep_list(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


PYTHON_ITEMS: list[tuple[str, Any, str | None]] = [
    ("a string instead of a request", "hello", None),
    ("None instead of a request", None, None),
    ("lone surrogate in the custom_id", {"custom_id": "a\ud800", "body": OPENAI_CHAT}, None),
    ("lone surrogate in the prompt", {"custom_id": "a", "body": {**OPENAI_CHAT, "user": "\udfff"}}, None),
    ("an object JSON cannot encode", {"custom_id": "a", "body": {**OPENAI_CHAT, "x": object()}}, None),
    ("nesting 100k deep", {"custom_id": "a", "body": {**OPENAI_CHAT, "x": deep_list(100_000)}}, None),
    ("custom_id a number", {"custom_id": 3, "body": OPENAI_CHAT}, "custom_id"),
    ("body a list", {"custom_id": "a", "url": "/v1/chat/completions", "body": [1]}, "body"),
]


@pytest.mark.parametrize(("name", "item", "field"), PYTHON_ITEMS, ids=[p[0] for p in PYTHON_ITEMS])
async def test_python_objects_json_cannot_carry_are_refused(
    tmp_path: Path, emulator: EmulatorThread, name: str, item: Any, field: str | None
) -> None:
    db = tmp_path / "jobs.db"
    before = await store_with_a_job(db, emulator, "openai")
    async with BatchManager(db, provider=create_provider("openai", base_url=emulator.openai_base_url,
                                                         api_key=API_KEY)) as bm:
        with pytest.raises(ValidationError) as info:
            await bm.submit([json.loads(line("ok-1")), item])
    assert (info.value.line, info.value.field) == (2, field), str(info.value)
    assert dump(db) == before


async def test_a_request_larger_than_one_batch_can_hold_is_refused(tmp_path: Path, emulator: EmulatorThread) -> None:
    """The line limit is what one provider batch holds: such a request could never be sent."""
    from asyncbatch.providers.base import ShardLimits
    from asyncbatch.providers.openai import OpenAIProvider

    small = OpenAIProvider(api_key=API_KEY, base_url=emulator.openai_base_url,
                           limits=ShardLimits(max_requests=100, max_bytes=100_000))
    db = tmp_path / "jobs.db"
    big_line = line("big", body={**OPENAI_CHAT, "user": "x" * 200_000})
    frame = len(line("over", body={**OPENAI_CHAT, "user": ""}))
    just_over = line("over", body={**OPENAI_CHAT, "user": "x" * (99_999 - frame)})
    assert len(just_over) < 100_000  # fits the reader's line limit, not a batch once framed
    async with BatchManager(db, provider=small) as bm:
        for bad, error, field in ((big_line, JSONLError, None), (just_over, ValidationError, "body")):
            source = tmp_path / "in.jsonl"
            source.write_bytes(line("ok-1") + b"\n" + bad + b"\n")
            with pytest.raises(error) as info:
                await bm.submit(source)
            assert (info.value.line, info.value.field) == (2, field), str(info.value)  # type: ignore[attr-defined]
        with pytest.raises(ValidationError) as python_info:
            await bm.submit([json.loads(big_line)])
        assert (python_info.value.line, python_info.value.field) == (1, "body")
        assert await bm.list_jobs() == []


def write_big_jsonl(path: Path, size: int, last: bytes) -> int:
    """``size`` bytes of valid lines (about 1 KB each) then ``last``; returns the number of ``last``'s line."""
    template = line("ID", body={**OPENAI_CHAT, "messages": [{"role": "user", "content": "lorem ipsum " * 80}]})
    written = count = 0
    with path.open("wb") as out:
        block: list[bytes] = []
        while written < size:
            one = template.replace(b'"ID"', b'"r%08d"' % count) + b"\n"
            block.append(one)
            written += len(one)
            count += 1
            if len(block) == 10_000:
                out.write(b"".join(block))
                block = []
        out.write(b"".join(block) + last + b"\n")
    return count + 1


@pytest.mark.slow
async def test_a_300_mb_file_with_a_bad_last_line_stores_nothing_in_flat_memory(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """The file is validated as a stream inside one transaction: the last line's error rolls back ~290,000
    stored requests, and memory stays at what one chunk needs."""
    import resource
    import sys

    db = tmp_path / "jobs.db"
    before = await store_with_a_job(db, emulator, "openai")
    source = tmp_path / "big.jsonl"
    try:
        bad_line = write_big_jsonl(source, 300 * 1024 * 1024, b'{"custom_id": "last", "body": {')
        assert source.stat().st_size > 300 * 1024 * 1024
        measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
                   "sys.exit(code)")
        env = {**os.environ, "OPENAI_API_KEY": API_KEY}
        proc = await anyio.run_process(
            [sys.executable, "-c", measure, sys.executable, "-m", "asyncbatch", "submit", str(source), "--db",
             str(db), "--base-url", emulator.openai_base_url], env=env, check=False)
    finally:
        source.unlink(missing_ok=True)
    *message, peak_kib = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(message) == 1, message
    assert message[0].startswith(f"asyncbatch: error: line {bad_line}: malformed JSON"), message
    peak_mib = int(peak_kib) / 1024
    print(f"300 MB submit: peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB for a 300 MB file"
    assert dump(db) == before
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < 1024  # nor did the test itself load it


async def test_crlf_line_endings_and_trailing_blank_lines_are_accepted_on_purpose(
    tmp_path: Path, emulator: EmulatorThread
) -> None:
    """Deliberate: JSON treats ``\\r`` as white space, so a file saved with Windows line endings means the same
    requests; blank lines at the very end are what editors leave. Neither reaches the provider (the spool is
    written from the stored bodies, which hold no ``\\r``)."""
    source = tmp_path / "crlf.jsonl"
    source.write_bytes(line("a") + b"\r\n" + line("b") + b"\r\n\r\n\n")
    async with BatchManager(tmp_path / "jobs.db", provider=create_provider(
            "openai", base_url=emulator.openai_base_url, api_key=API_KEY)) as bm:
        job = await bm.submit(source)
    assert job.counts.total == 2
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        bodies = [bytes(b) for (b,) in conn.execute("SELECT body FROM requests")]
    assert all(b"\r" not in body and json.loads(body)["model"] == OPENAI_CHAT["model"] for body in bodies)
