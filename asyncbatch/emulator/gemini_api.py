"""The Gemini API's Batch Mode and Files API (reference: more-providers-gateway-postgres.md, part B), under
``/v1`` and ``/v1beta`` alike.

Uploads follow the two-step resumable protocol (``start`` answers ``x-goog-upload-url``; the data goes there
with ``upload, finalize``). A batch is an Operation whose ``metadata`` carries the state
(``BATCH_STATE_PENDING`` until ``validate_after``, ``RUNNING`` while requests run until ``complete_after``,
then ``SUCCEEDED``; ``EXPIRED`` when requests expire or the batch passes its 48 h, ``CANCELLED`` once
``cancel_after`` has passed since a cancel) and ``batchStats`` with int64 counters as strings. Results of a
file batch go to a generated file (``source: GENERATED``), downloadable only through
``files/{id}:download?alt=media``; those of an inline batch to the Operation's ``inlinedResponses``, with each
request's ``metadata`` echoed. Requests that never ran (cancelled, expired) get no result line: Gemini
documents none. Per-request errors are ``google.rpc.Status`` objects (gRPC code and status name). Request
bodies are read in camelCase or snake_case, as Google's JSON parsers accept both.
"""

from __future__ import annotations

import functools
import re
import secrets
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
from aiohttp import web

from ..model import Outcome
from ..wire.web import json_response, query_int
from .bodies import check_gemini, gemini_embedding, gemini_response
from .core import Context
from .envelopes import GRPC_STATUS, gemini_error
from .files import CHUNK, read_json_lines, snapshot, stream_file
from .ledger import BatchRecord, FileRecord
from .outcomes import Decision, body_identity
from .routes import RouteSpec
from .runs import Run, Written, progress

WINDOW = 48 * 3600  # a batch not done within 48 h expires
FILE_TTL = 48 * 3600  # every file is deleted 48 h after it was made
MAX_FILE_BYTES = 2 * 1024**3
_ID = "[a-z0-9-]+"
#: Gemini is served under this path (its ``/v1/batches/{id}`` would collide with OpenAI's); the SDK and
#: GeminiProvider keep a base URL's path.
PREFIX = "/gemini"


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _get(obj: Any, camel: str) -> Any:
    """A field by its camelCase name or its snake_case one (both spellings reach Google's parsers)."""
    if not isinstance(obj, dict):
        return None
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel))


# --- files -----------------------------------------------------------------------------------------------


class GeminiFile(msgspec.Struct, kw_only=True):
    name: str
    display_name: str
    mime_type: str
    size: int
    created_at: float
    source: str
    path: Path

    def view(self, base: str, version: str) -> dict[str, Any]:
        view = {
            "name": self.name, "displayName": self.display_name, "mimeType": self.mime_type,
            "sizeBytes": str(self.size), "createTime": rfc3339(self.created_at),
            "updateTime": rfc3339(self.created_at), "expirationTime": rfc3339(self.created_at + FILE_TTL),
            "sha256Hash": "", "uri": f"{base}{PREFIX}/{version}/{self.name}", "state": "ACTIVE", "source": self.source,
        }
        if self.source == "GENERATED":
            view["downloadUri"] = f"{base}{PREFIX}/{version}/{self.name}:download?alt=media"
        return view


class _Session(msgspec.Struct, kw_only=True):
    display_name: str
    mime_type: str
    size: int


# --- request lines ---------------------------------------------------------------------------------------


class ParsedRequest(msgspec.Struct):
    custom_id: str
    identity: str
    request: dict[str, Any]
    metadata: dict[str, str] | None  # inline requests: echoed in the response


class _Spooled(msgspec.Struct, omit_defaults=True):
    """One request as a run reads it: a file line ``{key, request}``, or an inline one with its metadata."""

    request: dict[str, Any]
    key: str | None = None
    metadata: dict[str, str] | None = None


class GeminiLines:
    """``LineFormat`` of Gemini batches: one ``responses`` sink; requests that never ran go nowhere served."""

    provider = "gemini"

    def __init__(self, *, model: str, embed: bool, inline: bool) -> None:
        self.model = model
        self.embed = embed
        self.inline = inline

    def parse(self, raw: bytes) -> ParsedRequest:
        spooled = msgspec.json.decode(raw, type=_Spooled)
        key = spooled.key if spooled.key is not None else (spooled.metadata or {}).get("key", "")
        return ParsedRequest(custom_id=key, identity=body_identity(spooled.request), request=spooled.request,
                             metadata=spooled.metadata)

    def check(self, parsed: ParsedRequest) -> Decision | None:
        return check_gemini(parsed.request, embed=self.embed)

    def ran(self, parsed: ParsedRequest, decision: Decision) -> Written:
        if decision.outcome is Outcome.SUCCEEDED:
            if self.embed:
                return self._line(parsed, {"response": gemini_embedding(parsed.request)})
            response = gemini_response(self.model, parsed.request)
            usage = response["usageMetadata"]
            return self._line(parsed, {"response": response}, usage["promptTokenCount"],
                              usage["candidatesTokenCount"])
        status = decision.status or 500
        name, code = GRPC_STATUS.get(status, ("UNKNOWN", 2))
        return self._line(parsed, {"error": {"code": code, "message": decision.message, "status": name}})

    def not_run(self, parsed: ParsedRequest, outcome: Outcome) -> Written:
        return Written(b"{}", "unrun")

    def _line(self, parsed: ParsedRequest, result: dict[str, Any], used: int = 0, produced: int = 0) -> Written:
        head = {"metadata": parsed.metadata or {}} if self.inline else {"key": parsed.custom_id}
        return Written(msgspec.json.encode({**head, **result}), "responses", used, produced)


def _spool_inline(items: list[Any], target: Path) -> array[int]:
    """Write inline requests as JSONL (the runs read lines); reject what the API would reject."""
    offsets: array[int] = array("q")
    with open(target, "wb") as out:
        for index, item in enumerate(items):
            request = _get(item, "request")
            metadata = _get(item, "metadata")
            if not isinstance(request, dict):
                raise _Invalid(f"batch.input_config.requests.requests[{index}].request: required")
            if metadata is not None and not (isinstance(metadata, dict) and all(
                    isinstance(v, str) for v in metadata.values())):
                raise _Invalid(f"batch.input_config.requests.requests[{index}].metadata: a map of strings")
            offsets.append(out.tell())
            out.write(msgspec.json.encode(_Spooled(request=request, metadata=metadata or {"key": str(index)})))
            out.write(b"\n")
    return offsets


def _index_file(source: Path) -> array[int]:
    """Offsets of the lines of an input file; every line must be ``{"key": str, "request": {...}}``."""
    offsets: array[int] = array("q")
    position = 0
    seen: set[str] = set()
    with open(source, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            start, position = position, position + len(raw)
            if not raw.strip():
                continue
            try:
                line = msgspec.json.decode(raw)
            except msgspec.DecodeError:
                raise _Invalid(f"line {number} of the input file is not valid JSON") from None
            if not isinstance(line, dict) or not isinstance(line.get("key"), str) or not isinstance(
                    line.get("request"), dict):
                raise _Invalid(f"line {number} of the input file must be {{\"key\": string, \"request\": object}}")
            if line["key"] in seen:
                raise _Invalid(f"line {number} of the input file repeats the key {line['key']!r}")
            seen.add(line["key"])
            offsets.append(start)
    if not offsets:
        raise _Invalid("the input file holds no requests")
    return offsets


class _Invalid(Exception):
    """A create the API rejects with 400 INVALID_ARGUMENT."""


# --- batches ---------------------------------------------------------------------------------------------


class GeminiBatch:
    def __init__(self, *, name: str, ordinal: int, created_at: float, model: str, display_name: str, embed: bool,
                 inline: bool, run: Run[ParsedRequest]) -> None:
        self.name = name
        self.ordinal = ordinal
        self.created_at = created_at
        self.updated_at = created_at
        self.model = model
        self.display_name = display_name
        self.embed = embed
        self.inline = inline
        self.run = run
        self.state = "BATCH_STATE_PENDING"
        self.ended_at: float | None = None
        self.cancel_at: float | None = None
        self.output_file: str | None = None
        self.inlined: list[Any] | None = None
        self.lock = anyio.Lock()

    @property
    def done(self) -> bool:
        return self.state in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED",
                              "BATCH_STATE_EXPIRED")

    def view(self) -> dict[str, Any]:
        run = self.run
        kind = "EmbedContentBatch" if self.embed else "GenerateContentBatch"
        stats = {
            "requestCount": str(run.total),
            "successfulRequestCount": str(run.counts[Outcome.SUCCEEDED]),
            "failedRequestCount": str(run.counts[Outcome.ERRORED]),
            "pendingRequestCount": str(0 if self.done else run.total - run.done),
        }
        metadata: dict[str, Any] = {
            "@type": f"type.googleapis.com/google.ai.generativelanguage.v1beta.{kind}",
            "name": self.name, "model": f"models/{self.model}", "displayName": self.display_name,
            "state": self.state, "createTime": rfc3339(self.created_at), "updateTime": rfc3339(self.updated_at),
            "batchStats": stats,
        }
        operation: dict[str, Any] = {"name": self.name, "metadata": metadata, "done": self.done}
        if self.ended_at is not None:
            metadata["endTime"] = rfc3339(self.ended_at)
        output: dict[str, Any] | None = None
        if self.output_file is not None:
            output = {"responsesFile": self.output_file}
        elif self.inlined is not None:
            output = {"inlinedResponses": {"inlinedResponses": self.inlined}}
        if output is not None:
            metadata["output"] = output
            operation["response"] = {
                "@type": f"type.googleapis.com/google.ai.generativelanguage.v1beta.{kind}Output", **output}
        return operation


class GeminiAPI:
    """Handlers of Gemini's ``batches``, ``models/*:batchGenerateContent`` and ``files`` routes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workdir = ctx.data_dir / "gemini"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, GeminiFile] = {}
        self.sessions: dict[str, _Session] = {}
        self.batches: dict[str, GeminiBatch] = {}

    def routes(self) -> list[RouteSpec]:
        p = "gemini"
        specs: list[RouteSpec] = []
        for v in ("v1", "v1beta"):
            model = f"{PREFIX}/{v}/models/{{model:[^/:]+}}"
            batch = f"{PREFIX}/{v}/batches/{{batch_id:[^/:]+}}"
            file = f"{PREFIX}/{v}/files/{{file_id:{_ID}}}"
            specs += [
                RouteSpec("POST", model + ":batchGenerateContent", self.create, p, "gemini_create", creates=True),
                RouteSpec("POST", model + ":asyncBatchEmbedContent", self.create_embeddings, p, "gemini_create",
                          creates=True),
                RouteSpec("GET", f"{PREFIX}/{v}/batches", self.list_batches, p, "gemini_read"),
                RouteSpec("GET", batch, self.get, p, "gemini_read"),
                RouteSpec("POST", batch + ":cancel", self.cancel, p, "gemini_cancel"),
                RouteSpec("DELETE", batch, self.delete, p, "gemini_cancel"),
                RouteSpec("POST", f"{PREFIX}/upload/{v}/files", self.upload, p, "gemini_upload"),
                RouteSpec("GET", file, self.get_file, p, "gemini_read"),
                RouteSpec("DELETE", file, self.delete_file, p, "gemini_read"),
                RouteSpec("GET", file + ":download", self.download, p, "gemini_download", download=True),
                RouteSpec("GET", f"{PREFIX}/download/{v}/files/{{file_id:{_ID}}}:download", self.download, p,
                          "gemini_download", download=True),
            ]
        return specs

    # --- files -------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """``start`` opens a session; the session URL (``?upload_id=``) takes the bytes with ``upload, finalize``."""
        command = request.headers.get("x-goog-upload-command", "")
        upload_id = request.query.get("upload_id")
        if upload_id is None:
            if command != "start" or request.headers.get("x-goog-upload-protocol") != "resumable":
                return gemini_error(400, "Upload requests must use the resumable protocol (X-Goog-Upload-Command: "
                                    "start).")
            try:
                body = msgspec.json.decode(await request.read())
            except msgspec.DecodeError:
                return gemini_error(400, "Invalid JSON payload received.")
            meta = _get(body, "file") or {}
            declared = request.headers.get("x-goog-upload-header-content-length") or _get(meta, "sizeBytes") or 0
            upload_id = secrets.token_urlsafe(24)
            self.sessions[upload_id] = _Session(
                display_name=str(_get(meta, "displayName") or ""),
                mime_type=str(_get(meta, "mimeType") or request.headers.get("x-goog-upload-header-content-type")
                              or "application/octet-stream"), size=int(declared))
            url = f"{_base(request)}{request.path}?upload_id={upload_id}&upload_protocol=resumable"
            return web.Response(status=200, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        session = self.sessions.get(upload_id)
        if session is None:
            return gemini_error(404, "No such upload session.", headers={"x-goog-upload-status": "final"})
        if "upload" not in command:
            return gemini_error(400, "Unsupported X-Goog-Upload-Command.")
        file_id = secrets.token_hex(6)
        target = self.workdir / f"file-{file_id}"
        offset = int(request.headers.get("x-goog-upload-offset", "0"))
        size = 0
        async with await anyio.open_file(target, "ab" if offset else "wb") as out:
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if offset + size > MAX_FILE_BYTES:
                    return gemini_error(413, "File is larger than 2 GB.")
                await out.write(chunk)
        if "finalize" not in command:
            return web.Response(status=200, headers={"x-goog-upload-status": "active"})
        del self.sessions[upload_id]
        name = f"files/{file_id}"
        record = self.files[name] = GeminiFile(
            name=name, display_name=session.display_name, mime_type=session.mime_type, size=offset + size,
            created_at=self.ctx.clock.now(), source="UPLOADED", path=target)
        self.ctx.ledger.add_file(FileRecord(id=name, filename=session.display_name, purpose="batch",
                                            bytes=record.size, lines=0, created_at=record.created_at))
        version = request.path.split("/")[3]
        return json_response({"file": record.view(_base(request), version)},
                             headers={"x-goog-upload-status": "final"})

    def _live_file(self, file_id: str) -> GeminiFile | None:
        record = self.files.get(f"files/{file_id}")
        if record is None or self.ctx.clock.now() >= record.created_at + FILE_TTL:
            return None
        return record

    async def get_file(self, request: web.Request) -> web.Response:
        record = self._live_file(request.match_info["file_id"])
        if record is None:
            return _no_file(request)
        return json_response(record.view(_base(request), request.path.split("/")[2]))

    async def delete_file(self, request: web.Request) -> web.Response:
        record = self.files.pop(f"files/{request.match_info['file_id']}", None)
        if record is None:
            return _no_file(request)
        record.path.unlink(missing_ok=True)
        return json_response({})

    async def download(self, request: web.Request) -> web.StreamResponse:
        record = self._live_file(request.match_info["file_id"])
        if record is None:
            return _no_file(request)
        if request.query.get("alt") != "media":
            return gemini_error(400, "Downloads need alt=media.")
        if record.source != "GENERATED":
            return gemini_error(400, "Only generated files can be downloaded; this file was uploaded.")
        return await stream_file(request, record.path, "application/jsonl")

    # --- batches -----------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        return await self._create(request, embed=False)

    async def create_embeddings(self, request: web.Request) -> web.Response:
        return await self._create(request, embed=True)

    async def _create(self, request: web.Request, *, embed: bool) -> web.Response:
        model = request.match_info["model"]
        batch_id = secrets.token_hex(8)
        spool = self.workdir / f"batch-{batch_id}.input.jsonl"
        try:
            body = msgspec.json.decode(await request.read())
            batch = _get(body, "batch")
            if not isinstance(batch, dict):
                raise _Invalid("batch: required")
            display_name = _get(batch, "displayName")
            if not isinstance(display_name, str) or not display_name:
                raise _Invalid("batch.display_name: required")
            source = _get(batch, "inputConfig") or {}
            file_name, inline = _get(source, "fileName"), _get(_get(source, "requests"), "requests")
            if (file_name is None) == (inline is None):
                raise _Invalid("batch.input_config: exactly one of file_name or requests is required")
            if file_name is not None:
                record = self._live_file(str(file_name).removeprefix("files/"))
                if record is None:
                    return gemini_error(404, f"File {file_name} not found.", status_name="NOT_FOUND")
                await anyio.to_thread.run_sync(snapshot, record.path, spool)
                offsets = await anyio.to_thread.run_sync(_index_file, spool)
            else:
                if not isinstance(inline, list) or not inline:
                    raise _Invalid("batch.input_config.requests.requests: at least one request is required")
                offsets = await anyio.to_thread.run_sync(_spool_inline, inline, spool)
        except msgspec.DecodeError:
            return gemini_error(400, "Invalid JSON payload received.")
        except _Invalid as exc:
            spool.unlink(missing_ok=True)
            return gemini_error(400, str(exc))
        ordinal, now = self.ctx.next_ordinal(), self.ctx.clock.now()
        name = f"batches/{batch_id}"
        run = Run(fmt=GeminiLines(model=model, embed=embed, inline=inline is not None), batch_id=batch_id,
                  input_path=spool, offsets=offsets, workdir=self.workdir,
                  shuffle_seed=f"{self.ctx.config.seed}:{ordinal}")
        batch = self.batches[name] = GeminiBatch(name=name, ordinal=ordinal, created_at=now, model=model,
                                                 display_name=display_name, embed=embed,
                                                 inline=inline is not None, run=run)
        self.ctx.ledger.add_batch(BatchRecord(
            id=name, provider="gemini", ordinal=ordinal, created_at=now,
            endpoint="asyncBatchEmbedContent" if embed else "batchGenerateContent",
            metadata={"displayName": display_name}, request_count=run.total, status=batch.state))
        return json_response(batch.view())

    async def get(self, request: web.Request) -> web.Response:
        batch = self.batches.get(f"batches/{request.match_info['batch_id']}")
        if batch is None:
            return _no_batch(request)
        await self.advance(batch)
        return json_response(batch.view())

    async def list_batches(self, request: web.Request) -> web.Response:
        """Newest first; ``pageToken`` is the name of the next batch to show."""
        try:
            size = query_int(request, "pageSize", 50, 1, 1000)
        except ValueError as exc:
            return gemini_error(400, str(exc))
        items = list(reversed(self.batches.values()))
        start = 0
        if token := request.query.get("pageToken"):
            start = next((i for i, b in enumerate(items) if b.name == token), -1)
            if start < 0:
                return gemini_error(400, "Invalid page token.")
        page = items[start:start + size]
        for batch in page:
            await self.advance(batch)
        reply: dict[str, Any] = {"operations": [b.view() for b in page]}
        if start + size < len(items):
            reply["nextPageToken"] = items[start + size].name
        return json_response(reply)

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(f"batches/{request.match_info['batch_id']}")
        if batch is None:
            return _no_batch(request)
        await self.advance(batch)
        async with batch.lock:
            if batch.done:
                return gemini_error(400, f"Batch {batch.name} has already ended and cannot be cancelled.",
                                    status_name="FAILED_PRECONDITION")
            if batch.cancel_at is None:
                batch.cancel_at = self.ctx.clock.now()
        await self.advance(batch)
        return json_response({})

    async def delete(self, request: web.Request) -> web.Response:
        name = f"batches/{request.match_info['batch_id']}"
        batch = self.batches.get(name)
        if batch is None:
            return _no_batch(request)
        await self.advance(batch)
        if not batch.done:
            return gemini_error(400, f"Batch {name} is still running; cancel it first.",
                                status_name="FAILED_PRECONDITION")
        del self.batches[name]
        return json_response({})

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def advance(self, batch: GeminiBatch) -> None:
        """Bring ``batch`` up to date with the clock: start it, run requests, end it."""
        async with batch.lock:
            config, now = self.ctx.config, self.ctx.clock.now()
            if batch.done:
                return
            started = batch.created_at + config.validate_after
            cancelled_at = batch.cancel_at + config.cancel_after if batch.cancel_at is not None else None
            if cancelled_at is not None and now >= cancelled_at:
                await self._end(batch, "BATCH_STATE_CANCELLED", Outcome.CANCELLED, cancelled_at)
                return
            if now < started:
                return
            if batch.state == "BATCH_STATE_PENDING":
                batch.state, batch.updated_at = "BATCH_STATE_RUNNING", started
                self.ctx.ledger.update_batch(batch.name, status=batch.state)
            step = await progress(batch.run, ordinal=batch.ordinal, start=started, created_at=batch.created_at,
                                  expires_at=batch.created_at + WINDOW, now=now, ledger=self.ctx.ledger,
                                  config=config)
            if step.ended and batch.cancel_at is None:
                state = "BATCH_STATE_EXPIRED" if step.cut_short else "BATCH_STATE_SUCCEEDED"
                await self._end(batch, state, Outcome.EXPIRED, step.deadline)

    async def _end(self, batch: GeminiBatch, state: str, unrun: Outcome, at: float) -> None:
        run = batch.run
        await anyio.to_thread.run_sync(
            functools.partial(run.finish, unrun, self.ctx.ledger, strays=self.ctx.config.stray_results))
        if run.sink_lines["responses"]:
            path = run.sink_path("responses")
            if batch.inline:
                batch.inlined = await anyio.to_thread.run_sync(read_json_lines, path)
            else:
                name = f"files/batch-{batch.name.removeprefix('batches/')}"
                record = self.files[name] = GeminiFile(
                    name=name, display_name=f"{batch.display_name} responses", mime_type="application/jsonl",
                    size=path.stat().st_size, created_at=at, source="GENERATED", path=path)
                self.ctx.ledger.add_file(FileRecord(id=name, filename=record.display_name, purpose="batch_output",
                                                    bytes=record.size, lines=run.sink_lines["responses"],
                                                    created_at=at))
                batch.output_file = name
        batch.state, batch.ended_at, batch.updated_at = state, at, at
        self.ctx.ledger.update_batch(batch.name, status=state)


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _no_file(request: web.Request) -> web.Response:
    return gemini_error(404, f"File files/{request.match_info['file_id']} not found.", status_name="NOT_FOUND")


def _no_batch(request: web.Request) -> web.Response:
    return gemini_error(404, f"Batch batches/{request.match_info['batch_id']} not found.", status_name="NOT_FOUND")
