from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbatch import jsonl
from asyncbatch.errors import JSONLError
from asyncbatch.jsonl import BOM, SpoolWriter, iter_lines, read_chunks


def test_lines_are_numbered_and_crlf_and_trailing_blank_lines_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\r\n{"a":2}\n\n\n')
    assert list(iter_lines(path)) == [(1, b'{"a":1}'), (2, b'{"a":2}')]


def test_blank_line_inside_the_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n   \n{"a":2}\n')
    with pytest.raises(JSONLError) as info:
        list(iter_lines(path))
    assert info.value.line == 2
    assert "line 2" in str(info.value)


def test_byte_order_mark_is_rejected_on_line_one(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a":1}\n')
    with pytest.raises(JSONLError, match="byte order mark") as info:
        list(iter_lines(path))
    assert info.value.line == 1


def test_overlong_line_is_rejected_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n' + b"x" * 5000 + b"\n")
    with pytest.raises(JSONLError, match="longer than the limit") as info:
        list(iter_lines(path, max_line_bytes=1000))
    assert info.value.line == 2


def test_line_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"y" * 1000 + b"\n" + b"z" * 1000)
    assert [n for n, _ in iter_lines(path, max_line_bytes=1000)] == [1, 2]


async def test_read_chunks_streams_in_fixed_size_chunks(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"i":{i}}}\n' for i in range(25)))
    sizes = [len(chunk) async for chunk in read_chunks(path, chunk_lines=10)]
    assert sizes == [10, 10, 5]


async def test_read_chunks_also_end_at_a_byte_budget_with_at_least_one_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lengths = [300, 300, 300, 2000, 100, 100, 700, 50]
    path.write_bytes(b"".join(b"x" * n + b"\n" for n in lengths))
    chunks = [chunk async for chunk in read_chunks(path, chunk_lines=3, chunk_bytes=1000)]
    assert [[len(line) for _, line in chunk] for chunk in chunks] == [[300, 300, 300], [2000], [100, 100, 700],
                                                                      [50]]
    assert [n for chunk in chunks for n, _ in chunk] == list(range(1, 9))


def line_by_line(data: bytes, max_line_bytes: int) -> tuple[list[tuple[int, bytes]], tuple[str, int] | None]:
    """The reader's contract read the obvious way, one bounded readline at a time: the lines before the
    first error, and that error's message fragment and line."""
    handle = io.BytesIO(data)
    lines: list[tuple[int, bytes]] = []
    blank_at: int | None = None
    number = 0
    while line := handle.readline(max_line_bytes + 2):
        number += 1
        if number == 1 and line.startswith(BOM):
            return lines, ("byte order mark", 1)
        if len(line.removesuffix(b"\n")) > max_line_bytes:
            return lines, ("longer than the limit", number)
        content = line.rstrip(b"\r\n")
        if not content.strip():
            blank_at = blank_at or number
        elif blank_at is not None:
            return lines, ("blank line inside", blank_at)
        else:
            lines.append((number, content))
    return lines, None


PIECES = st.sampled_from([b"{}", b"a", b"xyz", b"0123456789", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\n\n", BOM])


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=40).map(b"".join), st.integers(1, 12), st.integers(1, 9), st.integers(1, 4))
def test_block_reading_is_line_by_line_reading_at_any_block_size(
    data: bytes, max_line_bytes: int, block: int, chunk: int
) -> None:
    """Tiny read blocks put every line, CR, blank run and overlong line across block boundaries."""
    expected, error = line_by_line(data, max_line_bytes)
    fd, name = tempfile.mkstemp(suffix=".jsonl")
    os.write(fd, data)
    os.close(fd)
    got: list[tuple[int, bytes]] = []
    chunked: list[tuple[int, bytes]] = []

    async def read_all_chunks() -> None:
        async for part in read_chunks(name, chunk_lines=chunk, max_line_bytes=max_line_bytes):
            assert len(part) == chunk or not error  # every chunk is full but the last
            chunked.extend(part)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(jsonl, "READ_BLOCK", block)
            if error is None:
                got = list(iter_lines(name, max_line_bytes=max_line_bytes))
                anyio.run(read_all_chunks)
                assert chunked == got
            else:
                with pytest.raises(JSONLError, match=error[0]) as info:
                    got.extend(iter_lines(name, max_line_bytes=max_line_bytes))
                assert info.value.line == error[1]
                with pytest.raises(JSONLError, match=error[0]):
                    anyio.run(read_all_chunks)
                assert chunked == expected[:len(chunked)]  # whole chunks before the error, in order
    finally:
        os.unlink(name)
    assert got == expected


async def test_spool_writer_is_atomic_and_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "spool" / "a.jsonl"
    with pytest.raises(RuntimeError):
        async with SpoolWriter(target) as writer:
            await writer.write([b"1"])
            raise RuntimeError("crash mid-write")
    assert not target.exists() and not list(target.parent.iterdir())
    async with SpoolWriter(target) as writer:
        await writer.write([b"1", b"2"])
    assert target.read_bytes() == b"1\n2\n"
    assert target.stat().st_mode & 0o777 == 0o600
