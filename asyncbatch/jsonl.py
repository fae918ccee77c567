"""Streaming JSONL reading with line numbers, strict about what silently corrupts batches.

Reading happens in a worker thread, a chunk of lines at a time, so a million-line file neither sits in
memory nor blocks the event loop.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio

from .errors import JSONLError
from .failpoints import failpoint

BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_LINE_BYTES = 200 * 1024 * 1024


def iter_lines(
    path: str | os.PathLike[str], *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without its newline) for every non-blank line.

    A UTF-8 byte order mark, a line longer than ``max_line_bytes`` and a blank line followed by more data
    are errors (they are what breaks a batch hours later); blank lines at the very end are tolerated, and
    so are CRLF line endings (JSON treats ``\\r`` as white space).
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; a generator cannot use `with` across yields cleanly
    except OSError as exc:
        raise JSONLError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    with handle:
        blank_at: int | None = None
        number = 0
        while True:
            line = handle.readline(max_line_bytes + 2)
            if not line:
                return
            number += 1
            if number == 1 and line.startswith(BOM):
                raise JSONLError("the file starts with a UTF-8 byte order mark; save it as UTF-8 without BOM", line=1)
            if len(line) > max_line_bytes + 1 or (len(line) > max_line_bytes and not line.endswith(b"\n")):
                raise JSONLError(f"line is longer than the limit of {max_line_bytes} bytes", line=number)
            content = line.rstrip(b"\r\n")
            if not content.strip():
                blank_at = blank_at or number
                continue
            if blank_at is not None:
                raise JSONLError("blank line inside the file (one JSON object per line, no empty lines)", line=blank_at)
            yield number, content


async def read_chunks(
    path: str | os.PathLike[str], *, chunk_lines: int = 5000, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """The lines of ``path`` in chunks, read in a worker thread."""
    lines = iter_lines(path, max_line_bytes=max_line_bytes)

    def next_chunk() -> list[tuple[int, bytes]]:
        chunk: list[tuple[int, bytes]] = []
        for item in lines:
            chunk.append(item)
            if len(chunk) >= chunk_lines:
                break
        return chunk

    while chunk := await anyio.to_thread.run_sync(next_chunk):
        yield chunk


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
