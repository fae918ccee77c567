"""Files in and out: uploads streamed into the store and checked line by line as they arrive, and the content
of uploads and of batches' output and error files streamed back.

An upload is read a block at a time and written to the store in chunks of ``CHUNK_BYTES`` (each its own short
transaction), so memory holds one chunk and one line whatever the file's size. It stays invisible (``uploading``)
until its last chunk is in and every line passed. Output and error files are never stored: their lines are made
from the batch's results on each download, the same bytes every time (their ids are derived, see ``ids``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
from aiohttp import BodyPartReader

from ..export import output_line, translated
from ..model import GatewayBatch, GatewayFile, Job, RequestState
from ..results import read_results
from ..store.base import GatewayStore, Store
from . import ids
from .objects import ApiError

CHUNK_BYTES = 1 << 20  # an upload's content is stored in chunks of this size
READ_BYTES = 1 << 16
OUTPUT_LINES = 1000  # output lines joined per write
REQUIRED = ("custom_id", "method", "url", "body")


class Backend(Store, GatewayStore, Protocol):
    """A store that also keeps the gateway's tables (every asyncbatch backend)."""


class _Head(msgspec.Struct):
    """An uploaded line as the upload check reads it: the keys OpenAI requires, the body left raw."""

    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_head = msgspec.json.Decoder(_Head)


class LineCheck:
    """Splits a stream into lines and checks each as OpenAI's upload does (JSON object, required keys),
    naming the line: the errors a batch would otherwise fail with hours later are 400s at upload."""

    def __init__(self) -> None:
        self.lines = 0  # request lines seen
        self._number = 0  # physical lines, blank ones included (what an editor shows)
        self._rest = b""
        self._blank_at: int | None = None

    def feed(self, data: bytes) -> None:
        data = self._rest + data
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._line(data[start:end])
            start = end + 1
        self._rest = data[start:]

    def finish(self) -> None:
        if self._rest:
            self._line(self._rest)
            self._rest = b""
        if not self.lines:
            raise ApiError(400, "The batch input file has no request lines.", param="file")

    def _line(self, raw: bytes) -> None:
        self._number += 1
        number = self._number
        if not raw.strip():
            self._blank_at = self._blank_at or number
            return
        if self._blank_at is not None:
            raise _bad(self._blank_at, "is blank; a blank line may only end the file")
        try:
            head = _head.decode(raw)
        except msgspec.ValidationError:
            raise _bad(number, "must be a JSON object") from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise _bad(number, "is not valid JSON") from None
        for key in REQUIRED:
            missing = not head.body if key == "body" else getattr(head, key) is None
            if missing:
                raise ApiError(400, f"Missing required parameter: '{key}' (batch input file line {number}). Each "
                               "line must be a JSON object with keys custom_id, method, url, body.", param=key)
        self.lines += 1


def _bad(number: int, what: str) -> ApiError:
    return ApiError(400, f"Batch input file line {number} {what}.", param="file")


async def receive_upload(
    store: Backend, part: BodyPartReader, *, owner: str, max_bytes: int
) -> GatewayFile:
    """Store one uploaded file (the multipart ``file`` part), checking it as it streams; an error removes
    everything stored of it. The rest of a refused body is read and dropped (up to the size limit), so that the
    client, still sending, reads the error instead of a broken connection."""
    filename = part.filename or "upload.jsonl"
    if not filename.lower().endswith(".jsonl"):
        await _drain(part, max_bytes)
        raise ApiError(400, f"Invalid file format for Batch API: {filename!r}. Batch input files must be .jsonl "
                       "files.", param="file")
    file = GatewayFile(id=ids.file_id(), owner=owner, purpose="batch", filename=filename, created_at=time.time(),
                       status="uploading")
    await store.add_file(file)
    check = LineCheck()
    size = seq = 0
    pending: list[bytes] = []
    held = 0
    try:
        while block := await part.read_chunk(READ_BYTES):
            size += len(block)
            if size > max_bytes:
                await _drain(part, max_bytes)
                mb = max_bytes / (1024 * 1024)
                raise ApiError(413, f"Batch input file is larger than the gateway's max_batch_file_size_mb of "
                               f"{mb:g} MB.", param="file")
            check.feed(block)
            pending.append(block)
            held += len(block)
            if held >= CHUNK_BYTES:
                await store.add_file_chunk(file.id, seq, b"".join(pending))
                seq, pending, held = seq + 1, [], 0
        check.finish()
        if pending:
            await store.add_file_chunk(file.id, seq, b"".join(pending))
        await store.file_uploaded(file.id, size, check.lines)
    except BaseException:
        await store.drop_upload(file.id)
        raise
    file.bytes, file.lines, file.status = size, check.lines, "processed"
    return file


async def _drain(part: BodyPartReader, max_bytes: int) -> None:
    seen = 0
    while seen <= max_bytes and (block := await part.read_chunk(READ_BYTES)):
        seen += len(block)


async def _lines(store: Store, batch: GatewayBatch, job: Job) -> AsyncIterator[tuple[str, bytes]]:
    """(kind, line) of every final result of the batch's job: ``output`` for a success, ``error`` for a final
    failure, in OpenAI's batch output format with the client's custom_ids and each body in the format of its
    line's url (a Claude answer to a chat line is a ``chat.completion``)."""
    encoder = msgspec.json.Encoder()
    async for result in read_results(store, job.id, raw_bodies=not translated(job)):
        line = msgspec.structs.replace(output_line(result, fmt="openai"), id=ids.line_id(batch.id, result.custom_id))
        yield ("output" if result.status is RequestState.SUCCEEDED else "error"), encoder.encode(line)


async def output_lines(store: Store, batch: GatewayBatch, job: Job, kind: str) -> AsyncIterator[bytes]:
    """The content of a batch's output (``kind="output"``) or error file, a thousand lines at a time."""
    chunk: list[bytes] = []
    async for line_kind, line in _lines(store, batch, job):
        if line_kind == kind:
            chunk.append(line)
            if len(chunk) >= OUTPUT_LINES:
                yield b"\n".join(chunk) + b"\n"
                chunk = []
    if chunk:
        yield b"\n".join(chunk) + b"\n"


async def measure_outputs(store: Store, batch: GatewayBatch, job: Job) -> dict[str, tuple[int, int]]:
    """kind -> (lines, bytes) of the output and error files, in one pass: what their File objects say."""
    sizes = {"output": (0, 0), "error": (0, 0)}
    async for kind, line in _lines(store, batch, job):
        lines, size = sizes[kind]
        sizes[kind] = (lines + 1, size + len(line) + 1)
    return sizes
