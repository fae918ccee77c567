"""Bad input is refused before anything is stored, with an error naming the line, custom_id and field."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from asyncbatch import BatchManager, DuplicateCustomIdError, JSONLError, ValidationError
from asyncbatch.jsonl import CHUNK_BYTES
from asyncbatch.providers.openai import OpenAIProvider
from asyncbatch.validation import Validator, validated_chunks
from tests.helpers import API_KEY, chat_line, write_jsonl


def manager(db: Path, **options: Any) -> BatchManager:
    # No network is used by submit: the base URL points nowhere on purpose.
    provider = OpenAIProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1")
    return BatchManager(db, provider=provider, **options)


def stored_rows(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        return (conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


BAD_LINES: list[tuple[str, Any, int, str | None, type[Exception]]] = [
    ("broken json", '{"custom_id": "a", "body": {', 2, None, JSONLError),
    ("not an object", "[1, 2]", 2, None, JSONLError),
    ("custom_id not a string", {"custom_id": 7, "url": "/v1/chat/completions", "body": {"model": "m"}}, 2,
     "custom_id", JSONLError),
    ("missing custom_id", {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}, 2,
     "custom_id", ValidationError),
    ("empty custom_id", chat_line(""), 2, "custom_id", ValidationError),
    ("method not POST", {**chat_line("x"), "method": "GET"}, 2, "method", ValidationError),
    ("url not the endpoint", {**chat_line("x"), "url": "/v1/embeddings"}, 2, "url", ValidationError),
    ("body not an object", {**chat_line("x"), "body": [1]}, 2, "body", ValidationError),
    ("body without model", {**chat_line("x"), "body": {"messages": []}}, 2, "body.model", ValidationError),
    ("unknown field", {**chat_line("x"), "extra": 1}, 2, "extra", JSONLError),
    ("duplicate custom_id", chat_line("ok-1"), 2, "custom_id", DuplicateCustomIdError),
]


@pytest.mark.parametrize(("name", "bad", "line", "field", "error"), BAD_LINES, ids=[b[0] for b in BAD_LINES])
async def test_bad_line_is_refused_and_nothing_is_stored(
    tmp_path: Path, name: str, bad: Any, line: int, field: str | None, error: type[Exception]
) -> None:
    db = tmp_path / "jobs.db"
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("ok-1"), bad, chat_line("ok-3")])
    async with manager(db) as bm:
        kept = await bm.submit([chat_line("earlier")], endpoint="/v1/chat/completions")
        with pytest.raises(error) as info:
            await bm.submit(path, endpoint="/v1/chat/completions")
        assert info.value.line == line  # type: ignore[attr-defined]
        assert info.value.field == field  # type: ignore[attr-defined]
        assert f"line {line}" in str(info.value)
        jobs = await bm.list_jobs()
    assert [j.id for j in jobs] == [kept.id]  # the earlier job is untouched, the bad one left no trace
    assert stored_rows(db) == (1, 1)


async def test_duplicate_inside_one_chunk_and_across_chunks_names_the_second_line(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i}") for i in range(12_000)]
    lines[11_000] = chat_line("r3")  # duplicate of a line in the first chunk
    async with manager(db) as bm:
        with pytest.raises(DuplicateCustomIdError) as info:
            await bm.submit(lines)
    assert (info.value.line, info.value.custom_id) == (11_001, "r3")
    assert stored_rows(db) == (0, 0)


async def test_empty_input_is_an_error(tmp_path: Path) -> None:
    async with manager(tmp_path / "jobs.db") as bm:
        with pytest.raises(ValidationError, match="no requests"):
            await bm.submit([])


async def test_metadata_limits(tmp_path: Path) -> None:
    async with manager(tmp_path / "jobs.db") as bm:
        with pytest.raises(ValidationError) as info:
            await bm.submit([chat_line("a")], metadata={f"k{i}": "v" for i in range(16)})
        assert info.value.field == "metadata"
        with pytest.raises(ValidationError):
            await bm.submit([chat_line("a")], metadata={"k": "v" * 513})


async def test_mixed_endpoints_and_native_lines_are_stored_as_given(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    embedding = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
                 "body": {"model": "text-embedding-3-small", "input": "hi"}}
    async with manager(db) as bm:
        job = await bm.submit([chat_line("c1", "x  y"), embedding])
    assert job.endpoint == "*" and job.counts.total == 2 and job.counts.pending == 2
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT custom_id, url, model, body FROM requests ORDER BY rid").fetchall()
    assert rows[0][:3] == ("c1", "/v1/chat/completions", "gpt-5.4-mini")
    assert b'"x  y"' in rows[0][3]  # the body bytes are stored as given, not re-encoded
    assert rows[1][:3] == ("e1", "/v1/embeddings", "text-embedding-3-small")


@pytest.mark.parametrize(
    ("custom_id", "refused"),
    [("ascii-id", False), ("café-☕", False), ("line\u2028sep", False), ("tab\there", True), ("é\x7f", True),
     ("ß\x00", True)],
)
async def test_custom_id_control_characters_are_refused_in_any_script(
    tmp_path: Path, custom_id: str, refused: bool
) -> None:
    """ASCII ids skip the control-character regex; other ids still go through it, with the same verdict."""
    db = tmp_path / "jobs.db"
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(custom_id)])
    async with manager(db) as bm:
        if refused:
            with pytest.raises(ValidationError, match="control characters") as info:
                await bm.submit(path)
            assert (info.value.line, info.value.field) == (1, "custom_id")
        else:
            await bm.submit(path)
    assert stored_rows(db)[1] == (0 if refused else 1)


async def test_request_size_counts_the_custom_id_in_utf8_bytes(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lines = [chat_line("plain"), chat_line("naïve-☕")]
    async with manager(db) as bm:
        await bm.submit(write_jsonl(tmp_path / "in.jsonl", lines))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT custom_id, url, body, size FROM requests ORDER BY rid").fetchall()
    for custom_id, url, body, size in rows:
        assert size == len(body) + len(custom_id.encode()) + len(url) + 64
    assert rows[1][3] - rows[0][3] == len("naïve-☕".encode()) - len("plain")


async def test_requests_from_an_iterable_are_chunked_by_bytes_too() -> None:
    """Large requests from an iterable end a chunk at CHUNK_BYTES, long before the chunk's count."""
    text = "x" * (CHUNK_BYTES // 3 + 1)
    validator = Validator(OpenAIProvider(api_key=API_KEY, base_url="http://127.0.0.1:9/v1"), None)
    chunks = [chunk async for chunk in validated_chunks((chat_line(f"r{i}", text) for i in range(7)), validator)]
    assert [len(chunk) for chunk in chunks] == [3, 3, 1]
    assert [r.custom_id for chunk in chunks for r in chunk] == [f"r{i}" for i in range(7)]
