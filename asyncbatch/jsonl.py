"""Streaming JSONL reading with line numbers, strict about what silently corrupts batches.

Reading happens in a worker thread, a chunk of lines at a time, so a million-line file neither sits in
memory nor blocks the event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from itertools import count, repeat
from pathlib import Path
from typing import BinaryIO

import anyio

from .errors import JSONLError
from .failpoints import failpoint

BOM = b"\xef\xbb\xbf"
CHUNK_BYTES = 8 << 20  # a chunk of input lines holds at most this much (and at least one line)
DEFAULT_MAX_LINE_BYTES = 200 * 1024 * 1024
READ_BLOCK = 64 * 1024  # measured: 64 KiB beats 16 KiB and 1 MiB (cache-sized)


def iter_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without its newline) for every non-blank line.

    A UTF-8 byte order mark, a line longer than ``max_line_bytes`` and a blank line followed by more data
    are errors (they are what breaks a batch hours later); blank lines at the very end are tolerated, and
    so are CRLF line endings (JSON treats ``\\r`` as white space).
    """
    for block in _line_blocks(path, max_line_bytes):
        yield from block


async def read_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_lines: int = 5000,
    chunk_bytes: int = CHUNK_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """The lines of ``path`` in chunks of ``chunk_lines``, read in a worker thread. A chunk ends early once
    its lines reach ``chunk_bytes`` (it holds at least one line): memory stays flat however long the lines."""
    blocks = _line_blocks(path, max_line_bytes)
    ready: list[tuple[int, bytes]] = []
    ready_bytes = 0

    def next_chunk() -> list[tuple[int, bytes]]:
        nonlocal ready_bytes
        while len(ready) < chunk_lines and ready_bytes < chunk_bytes and (block := next(blocks, None)) is not None:
            ready.extend(block)
            ready_bytes += sum(len(line) for _, line in block)
        take, size = 0, 0
        for _, line in ready[:chunk_lines]:
            if take and size + len(line) > chunk_bytes:
                break
            take += 1
            size += len(line)
        chunk = ready[:take]
        del ready[:take]
        ready_bytes -= size
        return chunk

    while chunk := await anyio.to_thread.run_sync(next_chunk):
        yield chunk


def _line_blocks(path: str | os.PathLike[str], max_line_bytes: int) -> Iterator[list[tuple[int, bytes]]]:
    """The lines of :func:`iter_lines`, one read block at a time.

    Each block is checked whole by C-level passes (its longest line, any blank line), so numbering is the
    only per-line work; a block that fails a check is walked line by line to name the offending line.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; a generator cannot use `with` across yields cleanly
    except OSError as exc:
        raise JSONLError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    with handle:
        number = 0
        blank_at: int | None = None
        for lines in _split_blocks(handle, max_line_bytes):
            if blank_at is None and max(map(len, lines)) <= max_line_bytes and all(map(bytes.strip, lines)):
                yield list(zip(count(number + 1), map(bytes.rstrip, lines, repeat(b"\r"))))
                number += len(lines)
                continue
            numbered: list[tuple[int, bytes]] = []
            for line in lines:
                number += 1
                if len(line) > max_line_bytes:
                    yield numbered
                    raise _too_long(number, max_line_bytes)
                content = line.rstrip(b"\r")
                if not content.strip():
                    blank_at = blank_at or number
                    continue
                if blank_at is not None:
                    yield numbered
                    raise JSONLError("blank line inside the file (one JSON object per line, no empty lines)",
                                     line=blank_at)
                numbered.append((number, content))
            yield numbered


def _split_blocks(handle: BinaryIO, max_line_bytes: int) -> Iterator[list[bytes]]:
    """The lines of ``handle`` (without their newline), a non-empty list per block read.

    A line still unfinished past ``max_line_bytes`` is an error at once: an endless line is never held whole.
    """
    seen = 0
    unfinished: list[bytes] = []  # the pieces of a line that has not ended yet
    unfinished_bytes = 0
    data = handle.read(max(READ_BLOCK, len(BOM)))  # the first read holds the whole mark, if there is one
    if data.startswith(BOM):
        raise JSONLError("the file starts with a UTF-8 byte order mark; save it as UTF-8 without BOM", line=1)
    while data:
        if b"\n" in data:
            lines = data.split(b"\n")
            if unfinished:
                lines[0] = b"".join([*unfinished, lines[0]])
            last = lines.pop()
            unfinished, unfinished_bytes = ([last], len(last)) if last else ([], 0)
            seen += len(lines)
            yield lines
        else:
            unfinished.append(data)
            unfinished_bytes += len(data)
        if unfinished_bytes > max_line_bytes:
            raise _too_long(seen + 1, max_line_bytes)
        data = handle.read(READ_BLOCK)
    if unfinished:
        yield [b"".join(unfinished)]


def _too_long(number: int, max_line_bytes: int) -> JSONLError:
    return JSONLError(f"line is longer than the limit of {max_line_bytes} bytes", line=number)


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents owner-only (``mkdir(parents=True)`` gives the parents the
    umask's mode, and the spool's root would be readable by others); returns ``path``."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        missing.mkdir(mode=0o700, exist_ok=True)
    return path


class SpoolWriter:
    """Writes a JSONL file atomically: to ``<path>.tmp`` first, renamed into place when complete.

    A crash mid-write leaves no half file under the real name; files are created owner-only because
    request bodies may hold personal data.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".tmp")
        self.bytes = 0

    async def __aenter__(self) -> SpoolWriter:
        private_dir(self.path.parent)
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._file = os.fdopen(fd, "wb")
        return self

    async def write(self, lines: list[bytes]) -> None:
        failpoint("spool_write")
        data = b"\n".join(lines) + b"\n"
        self.bytes += len(data)
        await anyio.to_thread.run_sync(self._file.write, data)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
