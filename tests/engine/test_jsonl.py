from __future__ import annotations

from pathlib import Path

import pytest

from asyncbatch.errors import JSONLError
from asyncbatch.jsonl import SpoolWriter, iter_lines, read_chunks


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
