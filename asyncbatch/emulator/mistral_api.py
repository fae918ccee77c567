"""Mistral's Files and Batch APIs (reference: more-providers-gateway-postgres.md, part C), under ``/v1/files``
and ``/v1/batch/jobs``.

A job is ``QUEUED`` until ``validate_after``, ``RUNNING`` while its requests run until ``complete_after``, then
``SUCCESS`` with successes in ``output_file`` and failed requests in ``error_file`` (``{id, custom_id, response:
{status_code, body}, error}`` lines, as the SDK's own reader parses them). It ends ``TIMEOUT_EXCEEDED`` when
requests expire or it outlives ``timeout_hours``; a cancel makes it ``CANCELLATION_REQUESTED``, then
``CANCELLED`` after ``cancel_after``. Requests that never ran get no line. Jobs are created from uploaded files
(``purpose=batch``) or inline ``requests``, whose results ``GET ...?inline=true`` returns as ``outputs``. The
list filters by status, ``created_after`` and metadata, which the SDK sends as bare query keys.
"""

from __future__ import annotations

import functools
import uuid
from array import array
from pathlib import Path
from typing import Any

import anyio
import msgspec
from aiohttp import BodyPartReader, web

from ..model import Outcome
from ..wire.openai import openai_error_body
from ..wire.web import json_response, query_int
from .bodies import check_openai, openai_body
from .core import Context
from .envelopes import mistral_error
from .files import CHUNK, read_json_lines, stream_file
from .ids import random_hex, random_hex_bytes
from .ledger import BatchRecord, FileRecord
from .outcomes import Decision, body_identity
from .routes import RouteSpec
from .runs import Run, Written, progress

#: What the emulator runs (bodies as OpenAI's: Mistral's chat and embeddings responses have the same shape);
#: the fill-in-the-middle endpoint answers as OpenAI's completions.
ENDPOINTS = {
    "/v1/chat/completions": "/v1/chat/completions",
    "/v1/embeddings": "/v1/embeddings",
    "/v1/fim/completions": "/v1/completions",
    "/v1/moderations": "/v1/moderations",
}
#: Mistral is served under this path (its ``/v1/files`` would collide with OpenAI's).
PREFIX = "/mistral"
RUNNING = ("QUEUED", "RUNNING", "CANCELLATION_REQUESTED")
_LIST_KEYS = frozenset({"page", "page_size", "model", "agent_id", "created_after", "created_by_me", "status",
                        "order_by"})


class MistralFile(msgspec.Struct, kw_only=True):
    """A file object (``purpose``, ``sample_type``, ``source``, as the SDK's ``CreateFileResponse``)."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    sample_type: str
    source: str
    num_lines: int | None
    object: str = "file"
    mimetype: str | None = "application/jsonl"
    signature: str | None = None
    expires_at: int | None = None
    visibility: str | None = "workspace"
    deleted: bool = False  # GetFileResponse has it (required)


class ParsedRequest(msgspec.Struct):
    custom_id: str
    identity: str
    body: dict[str, Any]


class _InputLine(msgspec.Struct):
    body: dict[str, Any]
    custom_id: str | None = None


class MistralLines:
    """``LineFormat`` of Mistral jobs: successes to ``output``, failed requests to ``error``."""

    provider = "mistral"

    def __init__(self, endpoint: str, model: str | None) -> None:
        self.endpoint = ENDPOINTS[endpoint]
        self.model = model

    def parse(self, raw: bytes) -> ParsedRequest:
        line = msgspec.json.decode(raw, type=_InputLine)
        body = line.body if self.model is None or "model" in line.body else {**line.body, "model": self.model}
        return ParsedRequest(custom_id=line.custom_id or "", identity=body_identity(line.body), body=body)

    def check(self, parsed: ParsedRequest) -> Decision | None:
        return check_openai(self.endpoint, parsed.body)

    def ran(self, parsed: ParsedRequest, decision: Decision) -> Written:
        if decision.outcome is Outcome.SUCCEEDED:
            body = openai_body(self.endpoint, parsed.body, random_hex_bytes(12))
            return self._line(parsed, 200, msgspec.Raw(body.raw), "output", body.input_tokens, body.output_tokens)
        status = decision.status or 500
        error = msgspec.to_builtins(openai_error_body(status, decision.message, param=decision.param))
        return self._line(parsed, status, error, "error")

    def not_run(self, parsed: ParsedRequest, outcome: Outcome) -> Written:
        return Written(b"{}", "unrun")

    @staticmethod
    def _line(parsed: ParsedRequest, status: int, body: Any, sink: str, used: int = 0, produced: int = 0) -> Written:
        line = {"id": "batch-" + random_hex(8), "custom_id": parsed.custom_id,
                "response": {"status_code": status, "body": body}, "error": None}
        return Written(msgspec.json.encode(line), sink, used, produced)


def _index(path: Path) -> array[int]:
    """Offsets of the input lines; each must be ``{"custom_id"?, "body": {...}}``."""
    offsets: array[int] = array("q")
    position = 0
    with open(path, "rb") as source:
        for number, raw in enumerate(source, start=1):
            start, position = position, position + len(raw)
            if not raw.strip():
                continue
            try:
                msgspec.json.decode(raw, type=_InputLine)
            except msgspec.DecodeError:
                raise _Invalid(f"Line {number} of the input file must be a JSON object with a `body`.") from None
            offsets.append(start)
    return offsets


class _Invalid(Exception):
    """A create the API rejects with 400."""


class MistralJob:
    def __init__(self, *, job_id: str, ordinal: int, created_at: float, body: _CreateJob, input_files: list[str],
                 inline: bool, run: Run[ParsedRequest]) -> None:
        self.id = job_id
        self.ordinal = ordinal
        self.created_at = created_at
        self.body = body
        self.input_files = input_files
        self.inline = inline
        self.run = run
        self.status = "QUEUED"
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self.cancel_at: float | None = None
        self.output_file: str | None = None
        self.error_file: str | None = None
        self.outputs: list[Any] | None = None
        self.lock = anyio.Lock()

    def view(self, *, inline: bool = False) -> dict[str, Any]:
        run = self.run
        failed = run.counts[Outcome.ERRORED]
        view: dict[str, Any] = {
            "id": self.id, "object": "batch", "input_files": self.input_files, "endpoint": self.body.endpoint,
            "model": self.body.model, "agent_id": self.body.agent_id, "errors": [], "status": self.status,
            "created_at": int(self.created_at),
            "started_at": int(self.started_at) if self.started_at is not None else None,
            "completed_at": int(self.completed_at) if self.completed_at is not None else None,
            "total_requests": run.total, "completed_requests": run.counts[Outcome.SUCCEEDED] + failed,
            "succeeded_requests": run.counts[Outcome.SUCCEEDED], "failed_requests": failed,
            "output_file": self.output_file, "error_file": self.error_file, "metadata": self.body.metadata,
        }
        if inline:
            view["outputs"] = self.outputs
        return view


class _Request(msgspec.Struct):
    body: dict[str, Any]
    custom_id: str | None = None


class _CreateJob(msgspec.Struct, kw_only=True):
    endpoint: str
    input_files: list[str] | None = None
    requests: list[_Request] | None = None
    model: str | None = None
    agent_id: str | None = None
    metadata: dict[str, str] | None = None
    timeout_hours: int = 24


class MistralAPI:
    """Handlers of Mistral's ``/v1/files`` and ``/v1/batch/jobs``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workdir = ctx.data_dir / "mistral"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, MistralFile] = {}
        self.jobs: dict[str, MistralJob] = {}

    def routes(self) -> list[RouteSpec]:
        p, jobs, file = "mistral", f"{PREFIX}/v1/batch/jobs", f"{PREFIX}/v1/files/{{file_id}}"
        return [
            RouteSpec("POST", f"{PREFIX}/v1/files", self.upload, p, "mistral_upload"),
            RouteSpec("GET", file, self.get_file, p, "mistral_read"),
            RouteSpec("DELETE", file, self.delete_file, p, "mistral_read"),
            RouteSpec("GET", file + "/content", self.content, p, "mistral_download", download=True),
            RouteSpec("POST", jobs, self.create, p, "mistral_create", creates=True),
            RouteSpec("GET", jobs, self.list_jobs, p, "mistral_read"),
            RouteSpec("GET", jobs + "/{job_id}", self.get, p, "mistral_read"),
            RouteSpec("POST", jobs + "/{job_id}/cancel", self.cancel, p, "mistral_cancel"),
            RouteSpec("DELETE", jobs + "/{job_id}", self.delete, p, "mistral_cancel"),
        ]

    def _path(self, file_id: str) -> Path:
        return self.workdir / f"file-{file_id}"

    # --- files -------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            return mistral_error(400, "Expected a multipart/form-data body.")
        file_id = str(uuid.uuid4())
        fields: dict[str, str] = {}
        filename: str | None = None
        size = lines = 0
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            if part.name != "file":
                fields[part.name] = await part.text()
                continue
            filename, last = part.filename or "upload.jsonl", b"\n"
            async with await anyio.open_file(self._path(file_id), "wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    lines += chunk.count(b"\n")
                    last = chunk[-1:]
                    await out.write(chunk)
            lines += last != b"\n"
        purpose = fields.get("purpose", "fine-tune")
        if filename is None:
            return mistral_error(422, "file: Field required")
        if purpose not in ("fine-tune", "batch", "ocr", "agentic_safety"):
            self._path(file_id).unlink(missing_ok=True)
            return mistral_error(422, f"purpose: Input should be 'fine-tune', 'batch', 'ocr' or 'agentic_safety', "
                                 f"got {purpose!r}")
        now = self.ctx.clock.now()
        record = self.files[file_id] = MistralFile(
            id=file_id, bytes=size, created_at=int(now), filename=filename, purpose=purpose,
            sample_type="batch_request" if purpose == "batch" else "instruct", source="upload", num_lines=lines,
            visibility=fields.get("visibility", "workspace"))
        self.ctx.ledger.add_file(FileRecord(id=file_id, filename=filename, purpose=purpose, bytes=size, lines=lines,
                                            created_at=now))
        return json_response(record)

    async def get_file(self, request: web.Request) -> web.Response:
        record = self._live_file(request.match_info["file_id"])
        return json_response(record) if record else _no_file(request)

    async def delete_file(self, request: web.Request) -> web.Response:
        record = self.files.pop(request.match_info["file_id"], None)
        if record is None:
            return _no_file(request)
        self._path(record.id).unlink(missing_ok=True)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    async def content(self, request: web.Request) -> web.StreamResponse:
        record = self._live_file(request.match_info["file_id"])
        if record is None:
            return _no_file(request)
        return await stream_file(request, self._path(record.id), "application/octet-stream")

    def _live_file(self, file_id: str) -> MistralFile | None:
        """The file, unless it is a result file past its ``expires_at`` (results are kept 24 h)."""
        record = self.files.get(file_id)
        if record is None or (record.expires_at is not None and self.ctx.clock.now() >= record.expires_at):
            return None
        return record

    # --- jobs --------------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        job_id = str(uuid.uuid4())
        spool = self.workdir / f"job-{job_id}.input.jsonl"
        try:
            body = msgspec.json.decode(await request.read(), type=_CreateJob)
            if body.endpoint not in ENDPOINTS:
                raise _Invalid(f"endpoint: {body.endpoint!r} is not supported by the emulator (supported: "
                               f"{', '.join(ENDPOINTS)})")
            if not body.model and not body.agent_id:
                raise _Invalid("model or agent_id is required")
            if bool(body.input_files) == bool(body.requests):
                raise _Invalid("exactly one of input_files or requests is required")
            if body.input_files:
                await anyio.to_thread.run_sync(self._concatenate, body.input_files, spool)
            else:
                await anyio.to_thread.run_sync(_write_requests, body.requests or [], spool)
            offsets = await anyio.to_thread.run_sync(_index, spool)
            if not offsets:
                raise _Invalid("the batch holds no requests")
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return mistral_error(422, f"Invalid request body: {exc}")
        except _Invalid as exc:
            spool.unlink(missing_ok=True)
            return mistral_error(400, str(exc))
        except KeyError as exc:
            return mistral_error(404, f"File {exc.args[0]} not found.")
        ordinal, now = self.ctx.next_ordinal(), self.ctx.clock.now()
        run = Run(fmt=MistralLines(body.endpoint, body.model), batch_id=job_id, input_path=spool, offsets=offsets,
                  workdir=self.workdir, shuffle_seed=f"{self.ctx.config.seed}:{ordinal}")
        job = self.jobs[job_id] = MistralJob(job_id=job_id, ordinal=ordinal, created_at=now, body=body,
                                             input_files=list(body.input_files or []),
                                             inline=bool(body.requests), run=run)
        self.ctx.ledger.add_batch(BatchRecord(
            id=job_id, provider="mistral", ordinal=ordinal, created_at=now, endpoint=body.endpoint,
            metadata=body.metadata, request_count=run.total, status=job.status))
        return json_response(job.view())

    def _concatenate(self, file_ids: list[str], target: Path) -> None:
        with open(target, "wb") as out:
            for file_id in file_ids:
                if self._live_file(file_id) is None:
                    raise KeyError(file_id)
                data = self._path(file_id).read_bytes()
                out.write(data if data.endswith(b"\n") else data + b"\n")

    async def get(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _no_job(request)
        await self.advance(job)
        return json_response(job.view(inline=request.query.get("inline") == "true"))

    async def list_jobs(self, request: web.Request) -> web.Response:
        """Pages by number; filters by status (repeatable), created_after, and metadata as bare query keys."""
        try:
            page = query_int(request, "page", 0, 0, 1_000_000)
            size = query_int(request, "page_size", 100, 1, 1000)
        except ValueError as exc:
            return mistral_error(422, str(exc))
        statuses = set(request.query.getall("status", []))
        metadata = {k: v for k, v in request.query.items() if k not in _LIST_KEYS}
        created_after = request.query.get("created_after")
        after = _epoch(created_after) if created_after else None
        jobs = list(self.jobs.values())
        if request.query.get("order_by", "-created") == "-created":
            jobs.reverse()
        for job in jobs:
            await self.advance(job)
        matching = [
            j for j in jobs
            if (not statuses or j.status in statuses) and (after is None or j.created_at >= after)
            and all((j.body.metadata or {}).get(k) == v for k, v in metadata.items())
        ]
        shown = matching[page * size:(page + 1) * size]
        return json_response({"object": "list", "data": [j.view() for j in shown], "total": len(matching)})

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _no_job(request)
        await self.advance(job)
        async with job.lock:
            if job.status not in RUNNING:
                return mistral_error(400, f"Job {job.id} has already ended ({job.status}).")
            if job.cancel_at is None:
                job.cancel_at = self.ctx.clock.now()
                job.status = "CANCELLATION_REQUESTED"
                self.ctx.ledger.update_batch(job.id, status=job.status)
        await self.advance(job)
        return json_response(job.view())

    async def delete(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _no_job(request)
        await self.advance(job)
        if job.status in RUNNING:
            return mistral_error(400, f"Job {job.id} is still running; cancel it first.")
        del self.jobs[job.id]
        return json_response({"id": job.id, "object": "batch", "deleted": True})

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def advance(self, job: MistralJob) -> None:
        async with job.lock:
            config, now = self.ctx.config, self.ctx.clock.now()
            if job.status not in RUNNING:
                return
            if job.cancel_at is not None and now >= job.cancel_at + config.cancel_after:
                await self._end(job, "CANCELLED", Outcome.CANCELLED, job.cancel_at + config.cancel_after)
                return
            started = job.created_at + config.validate_after
            if now < started:
                return
            if job.status == "QUEUED":
                job.status, job.started_at = "RUNNING", started
                self.ctx.ledger.update_batch(job.id, status=job.status)
            step = await progress(job.run, ordinal=job.ordinal, start=started, created_at=job.created_at,
                                  expires_at=job.created_at + job.body.timeout_hours * 3600, now=now,
                                  ledger=self.ctx.ledger, config=config)
            if step.ended and job.cancel_at is None:
                await self._end(job, "TIMEOUT_EXCEEDED" if step.cut_short else "SUCCESS", Outcome.EXPIRED,
                                step.deadline)

    async def _end(self, job: MistralJob, status: str, unrun: Outcome, at: float) -> None:
        run = job.run
        await anyio.to_thread.run_sync(
            functools.partial(run.finish, unrun, self.ctx.ledger, strays=self.ctx.config.stray_results))
        if job.inline:
            job.outputs = []
            for sink in ("output", "error"):
                if run.sink_lines[sink]:
                    job.outputs += await anyio.to_thread.run_sync(read_json_lines, run.sink_path(sink))
        job.output_file = self._adopt(job, "output", "batch_result", at)
        job.error_file = self._adopt(job, "error", "batch_error", at)
        job.status, job.completed_at = status, at
        self.ctx.ledger.update_batch(job.id, status=status)

    def _adopt(self, job: MistralJob, sink: str, sample_type: str, at: float) -> str | None:
        """Move a finished sink into the file store; results are downloadable for 24 h (``results_ttl``)."""
        run = job.run
        if not run.sink_lines[sink]:
            return None
        file_id = str(uuid.uuid4())
        run.sink_path(sink).replace(self._path(file_id))
        ttl = self.ctx.config.results_ttl
        record = self.files[file_id] = MistralFile(
            id=file_id, bytes=self._path(file_id).stat().st_size, created_at=int(at), filename=f"{job.id}_{sink}.jsonl",
            purpose="batch", sample_type=sample_type, source="mistral", num_lines=run.sink_lines[sink],
            expires_at=int(at + (24 * 3600 if ttl is None else ttl)))
        self.ctx.ledger.add_file(FileRecord(id=file_id, filename=record.filename, purpose="batch_output",
                                            bytes=record.bytes, lines=run.sink_lines[sink], created_at=at))
        return file_id


def _write_requests(requests: list[_Request], target: Path) -> None:
    with open(target, "wb") as out:
        for request in requests:
            out.write(msgspec.json.encode(request))
            out.write(b"\n")


def _epoch(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _no_file(request: web.Request) -> web.Response:
    return mistral_error(404, f"File {request.match_info['file_id']} not found.")


def _no_job(request: web.Request) -> web.Response:
    return mistral_error(404, f"Batch job {request.match_info['job_id']} not found.")

