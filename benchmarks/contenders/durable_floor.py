"""The durable floor: the least work that keeps asyncbatch's guarantee, to judge its end-to-end targets.

    python benchmarks/contenders/durable_floor.py --kind openai --base-url URL --input F --workdir D

Every request is committed to SQLite before its batch is created, every result is committed after, and
every result is read back and decoded; nothing else. No asyncbatch code: aiohttp, msgspec and sqlite3 only.

- Requests: the input JSONL is read in 1 MiB chunks, each decoded with ``decode_lines`` into minimal
  Structs (the body kept raw) and inserted with one ``executemany`` in one transaction (WAL,
  synchronous=NORMAL). No index, no uniqueness check, no per-request state: asyncbatch keeps all three,
  so the floor only gets lower.
- Batches: inputs above a provider's per-batch request limit are split at chunk offsets seen while
  ingesting, so no line is copied (by request count only: the byte limits are far above these inputs).
  ``openai`` uploads byte ranges of the input file itself (streamed multipart); ``anthropic`` streams
  ``{"requests":[line,line,...]}`` built by splicing the input lines verbatim (re-read from the file,
  never held in memory) -- sound because ingesting forbade any field but ``custom_id`` and ``params``.
  Polls right away, then every second, like the SDK contenders.
- Results: each output file is streamed to disk, then decoded the same way (the body kept raw) and
  inserted with one ``executemany`` in one transaction; then read back in rowid order, each body decoded.

Prints one JSON line: ``ok`` (results with status 200 / type ``succeeded``), ``inner`` seconds, and the
seconds of each phase: ``ingest``, ``submit``, ``wait``, ``download``, ``store``, ``read``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import msgspec

CHUNK = 1 << 20
POLL_SECONDS = 1.0
OPENAI_TERMINAL = ("completed", "failed", "expired", "cancelled")


class Shard(msgspec.Struct):
    """A byte range ``[start, end)`` of the input file holding at most one batch's worth of lines."""

    start: int
    end: int


def read_range(path: Path, start: int, end: int) -> Iterator[bytes]:
    """The bytes of ``[start, end)`` in chunks of at most 1 MiB."""
    with path.open("rb") as handle:
        handle.seek(start)
        left = end - start
        while left > 0 and (chunk := handle.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk


def whole_lines(path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """``[start, end)`` in pieces of about 1 MiB that end at a line end, each with its offset: what
    ``Decoder.decode_lines`` takes, so no line is split or decoded one Python call at a time."""
    rest = b""
    offset = start
    for chunk in read_range(path, start, end):
        buffer = rest + chunk
        if cut := buffer.rfind(b"\n") + 1:
            yield offset, buffer[:cut]
            offset += cut
        rest = buffer[cut:]
    if rest:
        yield offset, rest


async def stream(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    """``read_range`` as an upload body (reads from the page cache: cheaper inline than in a thread)."""
    for chunk in read_range(path, start, end):
        yield chunk


async def checked(response: aiohttp.ClientResponse) -> bytes:
    """The body of a successful response; an error names the call and status (never a header)."""
    body = await response.read()
    if response.status >= 400:
        raise RuntimeError(f"{response.method} {response.url.path}: HTTP {response.status}: {body[:300]!r}")
    return body


# --- the two kinds: their wire Structs, tables and calls -----------------------------------------------


class Kind(ABC):
    """What differs between the two APIs; everything else is shared."""

    limit: ClassVar[int]  # requests per batch
    request_type: ClassVar[type[Any]]
    result_type: ClassVar[type[Any]]
    tables: ClassVar[tuple[str, ...]]
    insert_request: ClassVar[str]
    insert_result: ClassVar[str]
    read_results: ClassVar[str]  # (status, body) in rowid order
    ok: ClassVar[object]  # the status of a success

    headers: dict[str, str]

    @abstractmethod
    def request_row(self, request: Any) -> tuple[object, ...]: ...

    @abstractmethod
    def endpoint(self, request: Any) -> str:
        """The batch endpoint, read from the first request."""

    @abstractmethod
    def result_row(self, result: Any) -> tuple[object, ...]: ...

    @abstractmethod
    async def submit(self, session: aiohttp.ClientSession, path: Path, shard: Shard, endpoint: str) -> str:
        """Create the batch of ``shard``; returns its id."""

    @abstractmethod
    async def wait(self, session: aiohttp.ClientSession, batch_id: str) -> list[str]:
        """Poll until the batch ends; returns the URLs of its result files."""


class OpenAIRequest(msgspec.Struct):
    custom_id: str
    method: str
    url: str
    body: msgspec.Raw


class OpenAIResponse(msgspec.Struct):
    status_code: int
    request_id: str | None = None
    body: msgspec.Raw = msgspec.Raw(b"null")


class OpenAIResult(msgspec.Struct):
    custom_id: str
    id: str | None = None
    response: OpenAIResponse | None = None
    error: msgspec.Raw = msgspec.Raw(b"null")


class OpenAIFile(msgspec.Struct):
    id: str


class OpenAIBatch(msgspec.Struct):
    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None


class OpenAI(Kind):
    """OpenAI Files + Batch: upload the input's byte range, create, poll, download output and error files."""

    limit = 50_000
    request_type = OpenAIRequest
    result_type = OpenAIResult
    tables = ("requests (custom_id TEXT, url TEXT, body BLOB)",
              "results (custom_id TEXT, line_id TEXT, status_code INTEGER, request_id TEXT, body BLOB)")
    insert_request = "INSERT INTO requests VALUES (?, ?, ?)"
    insert_result = "INSERT INTO results VALUES (?, ?, ?, ?, ?)"
    read_results = "SELECT status_code, body FROM results ORDER BY rowid"
    ok = 200

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}

    def request_row(self, request: OpenAIRequest) -> tuple[object, ...]:
        return request.custom_id, request.url, request.body

    def endpoint(self, request: OpenAIRequest) -> str:
        return request.url

    def result_row(self, result: OpenAIResult) -> tuple[object, ...]:
        response = result.response
        if response is None:
            return result.custom_id, result.id, None, None, result.error
        return result.custom_id, result.id, response.status_code, response.request_id, response.body

    async def submit(self, session: aiohttp.ClientSession, path: Path, shard: Shard, endpoint: str) -> str:
        with aiohttp.MultipartWriter("form-data") as form:
            form.append("batch").set_content_disposition("form-data", name="purpose")
            part = form.append(stream(path, shard.start, shard.end), {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename=f"{path.stem}.jsonl")
        async with session.post(f"{self.base_url}/files", data=form, headers=self.headers) as response:
            file = msgspec.json.decode(await checked(response), type=OpenAIFile)
        create = {"input_file_id": file.id, "endpoint": endpoint, "completion_window": "24h"}
        async with session.post(f"{self.base_url}/batches", json=create, headers=self.headers) as response:
            return msgspec.json.decode(await checked(response), type=OpenAIBatch).id

    async def wait(self, session: aiohttp.ClientSession, batch_id: str) -> list[str]:
        while (batch := await self._batch(session, batch_id)).status not in OPENAI_TERMINAL:  # noqa: ASYNC110 - polls a remote batch
            await asyncio.sleep(POLL_SECONDS)
        return [f"{self.base_url}/files/{file_id}/content"
                for file_id in (batch.output_file_id, batch.error_file_id) if file_id]

    async def _batch(self, session: aiohttp.ClientSession, batch_id: str) -> OpenAIBatch:
        async with session.get(f"{self.base_url}/batches/{batch_id}", headers=self.headers) as response:
            return msgspec.json.decode(await checked(response), type=OpenAIBatch)


class AnthropicRequest(msgspec.Struct, forbid_unknown_fields=True):
    custom_id: str
    params: msgspec.Raw


class AnthropicOutcome(msgspec.Struct):
    type: str
    message: msgspec.Raw = msgspec.Raw(b"null")
    error: msgspec.Raw = msgspec.Raw(b"null")


class AnthropicResult(msgspec.Struct):
    custom_id: str
    result: AnthropicOutcome


class MessageBatch(msgspec.Struct):
    id: str
    processing_status: str
    results_url: str | None = None


class Anthropic(Kind):
    """Anthropic Message Batches: one create call with the requests inline, poll, stream ``results_url``."""

    limit = 100_000
    request_type = AnthropicRequest
    result_type = AnthropicResult
    tables = ("requests (custom_id TEXT, params BLOB)", "results (custom_id TEXT, type TEXT, body BLOB)")
    insert_request = "INSERT INTO requests VALUES (?, ?)"
    insert_result = "INSERT INTO results VALUES (?, ?, ?)"
    read_results = "SELECT type, body FROM results ORDER BY rowid"
    ok = "succeeded"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}

    def request_row(self, request: AnthropicRequest) -> tuple[object, ...]:
        return request.custom_id, request.params

    def endpoint(self, request: AnthropicRequest) -> str:
        return "/v1/messages"

    def result_row(self, result: AnthropicResult) -> tuple[object, ...]:
        outcome = result.result
        return result.custom_id, outcome.type, outcome.error if outcome.type == "errored" else outcome.message

    async def submit(self, session: aiohttp.ClientSession, path: Path, shard: Shard, endpoint: str) -> str:
        headers = {**self.headers, "Content-Type": "application/json"}
        async with session.post(f"{self.base_url}/v1/messages/batches", data=self._body(path, shard),
                                headers=headers) as response:
            return msgspec.json.decode(await checked(response), type=MessageBatch).id

    @staticmethod
    async def _body(path: Path, shard: Shard) -> AsyncIterator[bytes]:
        """``{"requests":[...]}`` with the shard's lines spliced in as they are."""
        yield b'{"requests":['
        separator = b""
        for _, piece in whole_lines(path, shard.start, shard.end):
            if kept := [line for line in piece.split(b"\n") if line and not line.isspace()]:
                yield separator + b",".join(kept)
                separator = b","
        yield b"]}"

    async def wait(self, session: aiohttp.ClientSession, batch_id: str) -> list[str]:
        while (batch := await self._batch(session, batch_id)).processing_status != "ended":  # noqa: ASYNC110 - polls a remote batch
            await asyncio.sleep(POLL_SECONDS)
        return [batch.results_url or f"{self.base_url}/v1/messages/batches/{batch_id}/results"]

    async def _batch(self, session: aiohttp.ClientSession, batch_id: str) -> MessageBatch:
        url = f"{self.base_url}/v1/messages/batches/{batch_id}"
        async with session.get(url, headers=self.headers) as response:
            return msgspec.json.decode(await checked(response), type=MessageBatch)


KINDS: dict[str, type[OpenAI] | type[Anthropic]] = {"openai": OpenAI, "anthropic": Anthropic}


# --- the phases ----------------------------------------------------------------------------------------


def open_db(path: Path, kind: Kind) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    for table in kind.tables:
        db.execute(f"CREATE TABLE {table}")
    return db


def ingest(db: sqlite3.Connection, kind: Kind, path: Path) -> tuple[list[Shard], str]:
    """Commit every request; returns the shards and the endpoint.

    Shards are cut at piece boundaries, so each holds at most ``kind.limit`` requests (a little fewer when
    the input is above it) and needs no per-line offsets.
    """
    decode_lines = msgspec.json.Decoder(kind.request_type).decode_lines
    size = path.stat().st_size
    rows: list[tuple[object, ...]] = []
    shards: list[Shard] = []
    start = count = 0  # the current shard's offset and requests
    endpoint = ""
    for offset, piece in whole_lines(path, 0, size):
        requests = decode_lines(piece)
        if count and count + len(requests) > kind.limit:
            shards.append(Shard(start, offset))
            start, count = offset, 0
        if requests and not endpoint:
            endpoint = kind.endpoint(requests[0])
        count += len(requests)
        rows.extend(map(kind.request_row, requests))
    db.execute("BEGIN")
    db.executemany(kind.insert_request, rows)
    db.execute("COMMIT")
    return [*shards, Shard(start, size)], endpoint


async def download(session: aiohttp.ClientSession, headers: dict[str, str], url: str, dest: Path) -> Path:
    async with session.get(url, headers=headers) as response:
        if response.status >= 400:
            await checked(response)
        with dest.open("wb") as out:  # page-cache writes: cheaper inline than in a thread
            async for chunk in response.content.iter_chunked(CHUNK):
                out.write(chunk)
    return dest


def store(db: sqlite3.Connection, kind: Kind, files: Sequence[Path]) -> None:
    """Commit every result line of ``files`` in one transaction (rows decoded as SQLite takes them)."""
    decode_lines = msgspec.json.Decoder(kind.result_type).decode_lines
    rows = (kind.result_row(result) for path in files
            for _, piece in whole_lines(path, 0, path.stat().st_size) for result in decode_lines(piece))
    db.execute("BEGIN")
    db.executemany(kind.insert_result, rows)
    db.execute("COMMIT")


def read_back(db: sqlite3.Connection, kind: Kind) -> int:
    """Every result decoded, as a reader would; returns how many succeeded."""
    decode = msgspec.json.Decoder().decode
    ok = 0
    for status, body in db.execute(kind.read_results):
        decode(body)
        ok += status == kind.ok
    return ok


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    workdir, path = Path(args.workdir), Path(args.input)
    kind = KINDS[args.kind](args.base_url)
    db = open_db(workdir / "floor.db", kind)
    shards, endpoint = ingest(db, kind, path)
    ingested = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        batch_ids = await asyncio.gather(*(kind.submit(session, path, shard, endpoint) for shard in shards))
        submitted = time.perf_counter()
        urls = [url for found in await asyncio.gather(*(kind.wait(session, b) for b in batch_ids)) for url in found]
        waited = time.perf_counter()
        files = await asyncio.gather(*(download(session, kind.headers, url, workdir / f"results-{i}.jsonl")
                                       for i, url in enumerate(urls)))
    downloaded = time.perf_counter()
    store(db, kind, files)
    stored = time.perf_counter()
    ok = read_back(db, kind)
    db.close()
    done = time.perf_counter()
    print(json.dumps({"ok": ok, "inner": done - started, "ingest": ingested - started, "submit": submitted - ingested,
                      "wait": waited - submitted, "download": downloaded - waited, "store": stored - downloaded,
                      "read": done - stored}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=list(KINDS), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workdir", required=True)
    asyncio.run(main(parser.parse_args()))
