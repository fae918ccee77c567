"""OpenAI File objects kept on disk: uploads streamed in, batch outputs moved in, content streamed out."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
from aiohttp import web

from ..wire.openai import FileObject
from .ledger import FileRecord, Ledger
from .routes import TRUNCATE

CHUNK = 1 << 20  # uploads and downloads move a MiB per worker-thread call (64 KiB: 550 calls for a 35 MB output)


class FileStore:
    """Files by id, oldest first, each backed by one file under ``root``."""

    def __init__(self, root: Path, ledger: Ledger) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._ledger = ledger
        self._files: dict[str, FileObject] = {}

    @staticmethod
    def new_id() -> str:
        return "file-" + secrets.token_hex(12)

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def get(self, file_id: str) -> FileObject | None:
        return self._files.get(file_id)

    def add(self, obj: FileObject, lines: int, *, created_at: float) -> FileObject:
        """Register a file whose bytes are already at ``path(obj.id)``."""
        self._files[obj.id] = obj
        self._ledger.add_file(FileRecord(id=obj.id, filename=obj.filename, purpose=obj.purpose,
                                         bytes=obj.bytes, lines=lines, created_at=created_at))
        return obj

    def adopt(
        self, source: Path, *, lines: int, filename: str, purpose: str, now: float, expires_after: int
    ) -> FileObject:
        """Move a finished output file of ``lines`` lines into the store (batch output and error files)."""
        file_id = self.new_id()
        target = self.path(file_id)
        source.replace(target)
        size = target.stat().st_size
        obj = FileObject(id=file_id, bytes=size, created_at=int(now), expires_at=int(now) + expires_after,
                         filename=filename, purpose=purpose)
        return self.add(obj, lines, created_at=now)

    def delete(self, file_id: str) -> bool:
        if self._files.pop(file_id, None) is None:
            return False
        self.path(file_id).unlink(missing_ok=True)
        return True

    def listing(self, purpose: str | None) -> Iterator[FileObject]:
        return (f for f in self._files.values() if purpose is None or f.purpose == purpose)


async def stream_file(request: web.Request, path: Path, content_type: str) -> web.StreamResponse:
    """Send ``path`` with its Content-Length, chunk by chunk; a ``truncate`` fault cuts it halfway."""
    size = path.stat().st_size
    response = web.StreamResponse(headers={"content-type": content_type})
    response.content_length = size
    await response.prepare(request)
    limit = size // 2 if request.get(TRUNCATE) else size
    sent = 0
    async with await anyio.open_file(path, "rb") as source:
        while sent < limit:
            chunk = await source.read(min(CHUNK, limit - sent))
            if not chunk:
                break
            await response.write(chunk)
            sent += len(chunk)
    if sent < size and request.transport is not None:
        request.transport.abort()
    else:
        await response.write_eof()
    return response


def snapshot(source: Path, target: Path) -> None:
    """A batch's own view of its input: a hard link (instant), a copy where links fail. Deleting the file
    does not disturb the batch."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def read_json_lines(path: Path) -> list[object]:
    """Every line of a small JSONL file, decoded (inline results, which the API returns in one body)."""
    with open(path, "rb") as source:
        return [msgspec.json.decode(line) for line in source if line.strip()]
