"""The OpenAI Files and Batch APIs (reference doc sections 1, 2 and 4.1), under ``/v1``.

A batch's state is derived on every access from the live config and the clock: ``validating`` until
``validate_after``, then the input file is validated as a stream (failures go to ``errors.data``); requests
run evenly until ``complete_after``; ``finalizing`` lasts ``finalize_after``; then ``completed`` with
successes in the output file and HTTP errors in the error file (``response`` filled, ``error`` null). A
batch named in ``expire_batches``, or holding requests that expire, ends ``expired`` at its deadline.
"""

from __future__ import annotations

import functools
import secrets
from array import array
from itertools import accumulate, islice
from pathlib import Path
from typing import Any

import anyio
import msgspec
from aiohttp import BodyPartReader, web

from ..model import Outcome
from ..wire.openai import (
    BatchErrorItem,
    BatchErrors,
    BatchObject,
    BatchRequestCounts,
    BatchUsage,
    CreateBatchBody,
    FileDeleted,
    FileObject,
    ListPage,
    openai_error_body,
)
from ..wire.web import json_response, query_int
from .bodies import OPENAI_ENDPOINTS, check_openai, estimate_prompt_tokens, openai_body
from .config import EmulatorConfig, window_seconds
from .core import Context, after_cursor
from .envelopes import openai_error, request_id
from .files import CHUNK, FileStore, snapshot, stream_file
from .ids import random_hex, random_hex_bytes
from .ledger import BatchRecord
from .outcomes import Decision
from .routes import RouteSpec
from .runs import Run, Written, progress

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
EXPIRY_RANGE = (3600, 2_592_000)
OUTPUT_EXPIRY = 30 * 86400
MAX_LINE_ERRORS = 10


# --- input and result lines ------------------------------------------------------------------------------


class _InputHead(msgspec.Struct):
    """An input line as validation reads it: the body stays raw (only its model is looked at)."""

    custom_id: Any = None
    method: Any = None
    url: Any = None
    body: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when absent


class _BodyHead(msgspec.Struct):
    model: Any = None


class InputLine(msgspec.Struct):
    """A validated input line, as a run reads it."""

    custom_id: str
    body: dict[str, Any]
    url: str = ""

    @property
    def identity(self) -> str:
        return self.custom_id


class LineResponse(msgspec.Struct, kw_only=True):
    status_code: int
    request_id: str
    body: Any


class LineError(msgspec.Struct, kw_only=True):
    code: str
    message: str


class ResultLine(msgspec.Struct, kw_only=True):
    id: str
    custom_id: str
    response: LineResponse | None
    error: LineError | None


# A success line as ``ResultLine`` encodes it, put together around its line id, custom_id, request id and body
# (one per request: see ``bodies._CHAT``).
_SUCCESS_LINE = (b'{"id":"batch_req_', b'","custom_id":', b',"response":{"status_code":200,"request_id":"req_',
                 b'","body":', b'},"error":null}')

_NOT_RUN = {
    Outcome.EXPIRED: ("batch_expired", "This request could not be executed before the completion window expired."),
    Outcome.CANCELLED: ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}


class OpenAILines:
    """``LineFormat`` of OpenAI batches: successes to the ``output`` sink, everything else to ``error``."""

    provider = "openai"

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def parse(self, raw: bytes) -> InputLine:
        return msgspec.json.decode(raw, type=InputLine)

    def check(self, parsed: InputLine) -> Decision | None:
        return check_openai(self.endpoint, parsed.body)

    def ran(self, parsed: InputLine, decision: Decision) -> Written:
        if decision.outcome is Outcome.SUCCEEDED:
            ids = random_hex_bytes(47)  # the line's and the request's (32 digits, as the API's), the body's
            body = openai_body(self.endpoint, parsed.body, ids[64:])
            line = b"".join((_SUCCESS_LINE[0], ids[:32], _SUCCESS_LINE[1], msgspec.json.encode(parsed.custom_id),
                             _SUCCESS_LINE[2], ids[32:64], _SUCCESS_LINE[3], body.raw, _SUCCESS_LINE[4]))
            return Written(line, "output", body.input_tokens, body.output_tokens)
        line_id = "batch_req_" + random_hex(16)
        status = decision.status or 500
        error = openai_error_body(status, decision.message, param=decision.param)
        response = LineResponse(status_code=status, request_id=request_id(), body=error)
        failed = ResultLine(id=line_id, custom_id=parsed.custom_id, response=response, error=None)
        return Written(msgspec.json.encode(failed), "error")

    def not_run(self, parsed: InputLine, outcome: Outcome) -> Written:
        code, message = _NOT_RUN[outcome]
        line = ResultLine(id="batch_req_" + random_hex(16), custom_id=parsed.custom_id, response=None,
                          error=LineError(code=code, message=message))
        return Written(msgspec.json.encode(line), "error")


# --- validation ------------------------------------------------------------------------------------------


class Validation(msgspec.Struct, kw_only=True):
    errors: list[BatchErrorItem]
    offsets: array[int]
    model: str | None


class _WellFormed(msgspec.Struct, gc=False):
    """An input line that needs no second look: typed so that decoding a block of them checks their shape."""

    custom_id: str
    method: str
    url: str
    body: _BodyHead


_well_formed = msgspec.json.Decoder(_WellFormed)
_VALIDATION_BLOCK = 1 << 20
_ONE = 1


class _InputCheck:
    """The line checks of one input file, a block of lines at a time: a block of well-formed lines (nearly every
    file) is decoded in one call and checked as a whole; any other block is checked line by line, which names the
    lines and their problems, as the API does."""

    def __init__(self, endpoint: str, config: EmulatorConfig) -> None:
        self.endpoint = endpoint
        self.config = config
        self.offsets: array[int] = array("q")
        self.errors: list[BatchErrorItem] = []
        self.seen: set[str] = set()
        self.model: str | None = None
        self.prompt_tokens = 0

    def fail(self, code: str, message: str, number: int | None, param: str | None = None) -> None:
        self.errors.append(BatchErrorItem(code=code, message=message, param=param, line=number))

    def block(self, data: bytes, position: int, number: int) -> bool:
        """Check the lines of ``data`` (whole lines, each with its newline but maybe the last), the first of them
        line ``number`` at byte ``position``; False once checking must stop."""
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()
        if self._whole(data, lines, position):
            return True
        for raw in lines:
            start, position = position, position + len(raw) + 1
            if not self.line(raw, start, number):
                return False
            number += 1
        return True

    def _whole(self, data: bytes, lines: list[bytes], position: int) -> bool:
        """The block's checks in C-level passes; False (nothing recorded) when a line needs a closer look."""
        if self.config.token_limit is not None or len(self.offsets) + len(lines) > self.config.max_batch_lines:
            return False
        try:
            heads = _well_formed.decode_lines(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        ids = [head.custom_id for head in heads]
        models = {head.body.model for head in heads}
        model = next(iter(models)) if len(models) == 1 else None
        if (
            len(heads) != len(lines)  # a blank line in the block
            or len(set(ids)) != len(ids) or not self.seen.isdisjoint(ids)
            or not isinstance(model, str) or model != (self.model or model)
            or any(head.method != "POST" or head.url != self.endpoint for head in heads)
        ):
            return False
        self.model = model
        self.seen.update(ids)
        # each line starts one byte (its newline) after the end of the one before
        self.offsets.extend(islice(accumulate(map(_ONE.__add__, map(len, lines)), initial=position), len(lines)))
        return True

    def line(self, raw: bytes, start: int, number: int) -> bool:
        """Check one line (without its newline); False once checking must stop."""
        config = self.config
        if not raw.strip():
            return True
        if len(self.offsets) >= config.max_batch_lines:
            self.fail("too_many_tasks", f"The batch input file has more than {config.max_batch_lines:,} requests.",
                      None)
            return False
        self.offsets.append(start)
        try:
            head = msgspec.json.decode(raw, type=_InputHead)
            body = bytes(head.body).lstrip()
            model = msgspec.json.decode(body, type=_BodyHead).model if body.startswith(b"{") else None
        except msgspec.DecodeError:
            self.fail("invalid_json_line", "This line is not parseable as valid JSON.", number)
        else:
            if head.custom_id is None:
                self.fail("missing_required_parameter", "Missing required parameter: 'custom_id'.", number,
                          "custom_id")
            elif not isinstance(head.custom_id, str):
                self.fail("invalid_type", "Invalid type for 'custom_id': expected a string.", number, "custom_id")
            elif head.custom_id in self.seen:
                self.fail("duplicate_custom_id", "The custom_id for this request is a duplicate of another "
                          "request. The custom_id parameter must be unique for each request in a batch.", number,
                          "custom_id")
            else:
                self.seen.add(head.custom_id)
            if head.method != "POST":
                self.fail("invalid_method", "Invalid value for 'method': only 'POST' is supported.", number,
                          "method")
            if head.url != self.endpoint:
                self.fail("url_mismatch", f"The url of this request does not match the batch endpoint "
                          f"{self.endpoint!r}.", number, "url")
            if not body.startswith(b"{"):
                self.fail("missing_required_parameter", "Missing required parameter: 'body'.", number, "body")
            elif isinstance(model, str):
                if self.model is None:
                    self.model = model
                elif model != self.model:
                    self.fail("model_mismatch", "The model of this request differs from the model of the other "
                              "requests; one batch may use only one model.", number, "body.model")
                if config.token_limit is not None:
                    self.prompt_tokens += estimate_prompt_tokens(msgspec.json.decode(body))
        return len(self.errors) < MAX_LINE_ERRORS


def validate_input(path: Path, endpoint: str, config: EmulatorConfig) -> Validation:
    """Check a batch input file line by line, as a stream; collect up to MAX_LINE_ERRORS line errors."""
    size = path.stat().st_size
    if size > config.max_batch_file_bytes:
        limit_mb = config.max_batch_file_bytes // (1024 * 1024)
        return Validation(errors=[BatchErrorItem(
            code="file_too_large", message=f"The input file exceeds the {limit_mb} MB limit of a batch.")],
            offsets=array("q"), model=None)
    check = _InputCheck(endpoint, config)
    with open(path, "rb") as source:
        position, number, rest = 0, 1, b""
        while data := source.read(_VALIDATION_BLOCK):
            cut = data.rfind(b"\n") + 1
            if not cut:
                rest += data
                continue
            block, rest = rest + data[:cut], data[cut:]
            if not check.block(block, position, number):
                break
            position += len(block)
            number += block.count(b"\n")
        else:
            if rest:
                check.block(rest, position, number)
    errors, models = check.errors, check.model
    if not errors and not check.offsets:
        check.fail("empty_file", "The batch input file is empty.", None)
    if not errors and config.token_limit is not None and check.prompt_tokens > config.token_limit:
        check.fail("token_limit_exceeded", f"Enqueued token limit reached for {models} in organization "
                   f"org-emulator. Limit: {config.token_limit:,} enqueued tokens. Please try again once some "
                   "in_progress batches have been completed.", None)
    return Validation(errors=errors, offsets=check.offsets, model=models)


# --- batches ---------------------------------------------------------------------------------------------


class OpenAIBatch:
    """One batch's state. Timestamps are float seconds; the wire view rounds them down."""

    def __init__(
        self,
        *,
        batch_id: str,
        ordinal: int,
        created_at: float,
        input_file_id: str,
        input_path: Path,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        output_expires_after: int,
    ) -> None:
        self.id = batch_id
        self.ordinal = ordinal
        self.created_at = created_at
        self.input_file_id = input_file_id
        self.input_path = input_path  # a snapshot: deleting the input file does not disturb the batch
        self.endpoint = endpoint
        self.completion_window = completion_window
        self.expires_at = created_at + window_seconds(completion_window)
        self.metadata = metadata
        self.output_expires_after = output_expires_after
        self.status = "validating"
        self.stamps: dict[str, float] = {}
        self.errors: list[BatchErrorItem] = []
        self.model: str | None = None
        self.run: Run[InputLine] | None = None
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.lock = anyio.Lock()

    def set(self, status: str, at: float) -> None:
        self.status = status
        self.stamps[f"{status}_at"] = at

    def view(self) -> BatchObject:
        def stamp(name: str) -> int | None:
            value = self.stamps.get(name)
            return int(value) if value is not None else None

        run = self.run
        counts = BatchRequestCounts(
            total=run.total if run else 0,
            completed=run.counts[Outcome.SUCCEEDED] if run else 0,
            failed=run.counts[Outcome.ERRORED] if run else 0,
        )
        usage = None
        if run is not None:
            usage = BatchUsage(input_tokens=run.input_tokens, output_tokens=run.output_tokens,
                               total_tokens=run.input_tokens + run.output_tokens)
        return BatchObject(
            id=self.id, endpoint=self.endpoint, model=self.model,
            errors=BatchErrors(data=self.errors) if self.errors else None,
            input_file_id=self.input_file_id, completion_window=self.completion_window, status=self.status,
            output_file_id=self.output_file_id, error_file_id=self.error_file_id,
            created_at=int(self.created_at), in_progress_at=stamp("in_progress_at"),
            expires_at=int(self.expires_at), finalizing_at=stamp("finalizing_at"),
            completed_at=stamp("completed_at"), failed_at=stamp("failed_at"), expired_at=stamp("expired_at"),
            cancelling_at=stamp("cancelling_at"), cancelled_at=stamp("cancelled_at"), request_counts=counts,
            usage=usage, metadata=self.metadata,
        )


class OpenAIAPI:
    """Handlers of ``/v1/files`` and ``/v1/batches``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.files = FileStore(ctx.data_dir / "files", ctx.ledger)
        self.workdir = ctx.data_dir / "openai-runs"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.batches: dict[str, OpenAIBatch] = {}

    def routes(self) -> list[RouteSpec]:
        p = "openai"
        return [
            RouteSpec("POST", "/v1/files", self.upload, p, "files_upload"),
            RouteSpec("GET", "/v1/files", self.list_files, p, "files_read"),
            RouteSpec("GET", "/v1/files/{file_id}", self.get_file, p, "files_read"),
            RouteSpec("GET", "/v1/files/{file_id}/content", self.file_content, p, "files_content", download=True),
            RouteSpec("DELETE", "/v1/files/{file_id}", self.delete_file, p, "files_delete"),
            RouteSpec("POST", "/v1/batches", self.create_batch, p, "batches_create", creates=True),
            RouteSpec("GET", "/v1/batches", self.list_batches, p, "batches_read"),
            RouteSpec("GET", "/v1/batches/{batch_id}", self.get_batch, p, "batches_read"),
            RouteSpec("POST", "/v1/batches/{batch_id}/cancel", self.cancel_batch, p, "batches_cancel"),
        ]

    # --- files -------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        """Multipart upload, streamed to disk; nested fields in bracket or dot notation."""
        config = self.ctx.config
        if not request.content_type.startswith("multipart/form-data"):
            return openai_error(400, "Expected a multipart/form-data body.")
        fields: dict[str, str] = {}
        file_id = self.files.new_id()
        target = self.files.path(file_id)
        filename: str | None = None
        size = lines = 0
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.name != "file":
                    fields[part.name.replace("[", ".").rstrip("]")] = await part.text()
                    continue
                filename = part.filename or "upload"
                last = b"\n"
                async with await anyio.open_file(target, "wb") as out:
                    while chunk := await part.read_chunk(CHUNK):
                        size += len(chunk)
                        if size > config.max_file_bytes:
                            limit_mb = config.max_file_bytes // (1024 * 1024)
                            raise _Rejected(413, f"File is too large: the limit is {limit_mb} MB.", "file")
                        lines += chunk.count(b"\n")
                        last = chunk[-1:]
                        await out.write(chunk)
                if last != b"\n":
                    lines += 1  # a last line without its newline
            obj = self._file_object(file_id, filename, size, fields)
        except _Rejected as rejected:
            target.unlink(missing_ok=True)
            return openai_error(rejected.status, rejected.message, param=rejected.param)
        return json_response(self.files.add(obj, lines, created_at=self.ctx.clock.now()))

    def _file_object(self, file_id: str, filename: str | None, size: int, fields: dict[str, str]) -> FileObject:
        purpose = fields.get("purpose")
        if filename is None:
            raise _Rejected(400, "Missing required parameter: 'file'.", "file")
        if purpose is None:
            raise _Rejected(400, "Missing required parameter: 'purpose'.", "purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise _Rejected(400, f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
                            f"{', '.join(UPLOAD_PURPOSES)}.", "purpose")
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise _Rejected(400, "Invalid file format for Batch API. Must be .jsonl", "file")
        now = int(self.ctx.clock.now())
        expires_at = now + OUTPUT_EXPIRY if purpose == "batch" else None
        if "expires_after.seconds" in fields or "expires_after.anchor" in fields:
            seconds = _expiry_seconds(fields.get("expires_after.anchor"), fields.get("expires_after.seconds"),
                                      "expires_after")
            expires_at = now + seconds
        return FileObject(id=file_id, bytes=size, created_at=now, expires_at=expires_at, filename=filename,
                          purpose=purpose)

    async def list_files(self, request: web.Request) -> web.Response:
        try:
            limit = query_int(request, "limit", 10_000, 1, 10_000)
        except ValueError as exc:
            return openai_error(400, str(exc), param="limit")
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            return openai_error(400, f"Invalid value for 'order': {order!r}.", param="order")
        items = list(self.files.listing(request.query.get("purpose")))
        if order == "desc":
            items.reverse()
        return self._page(items, request.query.get("after"), limit)

    async def get_file(self, request: web.Request) -> web.Response:
        obj = self._live_file(request.match_info["file_id"])
        return json_response(obj) if obj else _no_file(request)

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        if self._live_file(file_id) is None:
            return _no_file(request)
        return await stream_file(request, self.files.path(file_id), "application/octet-stream")

    def _live_file(self, file_id: str) -> FileObject | None:
        """The file, unless it has expired: OpenAI deletes a file at its ``expires_at``."""
        obj = self.files.get(file_id)
        if obj is None or (obj.expires_at is not None and self.ctx.clock.now() >= obj.expires_at):
            return None
        return obj

    async def delete_file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        return json_response(FileDeleted(id=file_id)) if self.files.delete(file_id) else _no_file(request)

    # --- batches -----------------------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=CreateBatchBody)
            batch = self._new_batch(body)
        except msgspec.DecodeError as exc:
            return openai_error(400, f"Invalid request body: {exc}")
        except _Rejected as rejected:
            return openai_error(rejected.status, rejected.message, param=rejected.param)
        self.batches[batch.id] = batch
        self.ctx.ledger.add_batch(BatchRecord(
            id=batch.id, provider="openai", ordinal=batch.ordinal, created_at=batch.created_at,
            endpoint=batch.endpoint, metadata=batch.metadata, request_count=0, status=batch.status))
        return json_response(batch.view())

    def _new_batch(self, body: CreateBatchBody) -> OpenAIBatch:
        config = self.ctx.config
        for name in ("input_file_id", "endpoint", "completion_window"):
            if getattr(body, name) is None:
                raise _Rejected(400, f"Missing required parameter: '{name}'.", name)
        source = self.files.get(str(body.input_file_id))
        if source is None:
            raise _Rejected(404, f"No such File object: {body.input_file_id}", "input_file_id")
        if source.purpose != "batch":
            raise _Rejected(400, f"File {source.id} has purpose {source.purpose!r}; a batch input file must "
                            "be uploaded with purpose 'batch'.", "input_file_id")
        endpoint = str(body.endpoint)
        if endpoint not in OPENAI_ENDPOINTS and f"/v1{endpoint}" in OPENAI_ENDPOINTS:
            endpoint = f"/v1{endpoint}"  # Azure names the endpoint without /v1 while its lines keep it
        if endpoint not in OPENAI_ENDPOINTS:
            raise _Rejected(400, f"Invalid value for 'endpoint': {body.endpoint!r}. Supported values are: "
                            f"{', '.join(OPENAI_ENDPOINTS)}.", "endpoint")
        if body.completion_window not in config.completion_windows:
            raise _Rejected(400, f"Invalid value for 'completion_window': {body.completion_window!r}. Supported "
                            f"values are: {', '.join(config.completion_windows)}.", "completion_window")
        output_expiry = OUTPUT_EXPIRY
        if body.output_expires_after is not None:
            output_expiry = _expiry_seconds(body.output_expires_after.anchor, body.output_expires_after.seconds,
                                            "output_expires_after")
        metadata = _metadata(body.metadata)
        batch_id = "batch_" + secrets.token_hex(12)
        input_path = self.workdir / f"{batch_id}.input.jsonl"
        snapshot(self.files.path(source.id), input_path)
        return OpenAIBatch(
            batch_id=batch_id, ordinal=self.ctx.next_ordinal(), created_at=self.ctx.clock.now(),
            input_file_id=source.id, input_path=input_path, endpoint=endpoint,
            completion_window=body.completion_window, metadata=metadata, output_expires_after=output_expiry,
        )

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _no_batch(request)
        await self.advance(batch)
        return json_response(batch.view())

    async def list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = query_int(request, "limit", 20, 1, 100)
        except ValueError as exc:
            return openai_error(400, str(exc), param="limit")
        after = request.query.get("after")
        try:
            page, has_more = after_cursor(list(reversed(self.batches.values())), after, limit)
        except KeyError:
            return _bad_cursor(after)
        for batch in page:  # the batches shown (only they) are brought up to date, as the API shows them
            await self.advance(batch)
        return _listed([batch.view() for batch in page], has_more)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _no_batch(request)
        await self.advance(batch)
        async with batch.lock:
            if batch.status in ("validating", "in_progress", "finalizing"):
                batch.set("cancelling", self.ctx.clock.now())
                self.ctx.ledger.update_batch(batch.id, status=batch.status)
            elif batch.status not in ("cancelling", "cancelled"):
                return openai_error(400, f"Cannot cancel a batch with status '{batch.status}'.")
        return json_response(batch.view())

    def _page(self, items: list[Any], after: str | None, limit: int) -> web.Response:
        try:
            page, has_more = after_cursor(items, after, limit)
        except KeyError:
            return _bad_cursor(after)
        return _listed(page, has_more)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def advance(self, batch: OpenAIBatch) -> None:
        """Bring ``batch`` up to date with the clock: validate, run requests, end it."""
        async with batch.lock:
            config, now = self.ctx.config, self.ctx.clock.now()
            if batch.status == "validating" and now >= batch.created_at + config.validate_after:
                await self._validate(batch, batch.created_at + config.validate_after)
            if batch.status == "in_progress":
                await self._progress(batch, now)
            if batch.status == "finalizing":
                done_at = batch.stamps["finalizing_at"] + config.finalize_after
                if now >= done_at:
                    await self._end(batch, "completed", done_at)
            if batch.status == "cancelling":
                done_at = batch.stamps["cancelling_at"] + config.cancel_after
                if now >= done_at:
                    await self._end(batch, "cancelled", done_at)

    async def _validate(self, batch: OpenAIBatch, at: float) -> None:
        config = self.ctx.config
        result = await anyio.to_thread.run_sync(validate_input, batch.input_path, batch.endpoint, config)
        batch.model = result.model
        if result.errors:
            batch.errors = result.errors
            batch.set("failed", at)
            self.ctx.ledger.update_batch(batch.id, status="failed", request_count=len(result.offsets))
            return
        batch.run = Run(fmt=OpenAILines(batch.endpoint), batch_id=batch.id, input_path=batch.input_path,
                        offsets=result.offsets, workdir=self.workdir, shuffle_seed=f"{config.seed}:{batch.ordinal}")
        batch.set("in_progress", at)
        self.ctx.ledger.update_batch(batch.id, status="in_progress", request_count=batch.run.total)

    async def _progress(self, batch: OpenAIBatch, now: float) -> None:
        assert batch.run is not None
        step = await progress(batch.run, ordinal=batch.ordinal, start=batch.stamps["in_progress_at"],
                              created_at=batch.created_at, expires_at=batch.expires_at, now=now,
                              ledger=self.ctx.ledger, config=self.ctx.config)
        if not step.ended:
            return
        if step.cut_short:
            await self._end(batch, "expired", step.deadline)
        else:
            batch.set("finalizing", step.deadline)
            self.ctx.ledger.update_batch(batch.id, status="finalizing")

    async def _end(self, batch: OpenAIBatch, status: str, at: float) -> None:
        run = batch.run
        if run is not None:
            unrun = Outcome.CANCELLED if status == "cancelled" else Outcome.EXPIRED
            await anyio.to_thread.run_sync(
                functools.partial(run.finish, unrun, self.ctx.ledger, strays=self.ctx.config.stray_results))
            batch.output_file_id = await self._adopt(batch, run, "output")
            batch.error_file_id = await self._adopt(batch, run, "error")
        batch.set(status, at)
        self.ctx.ledger.update_batch(batch.id, status=status)

    async def _adopt(self, batch: OpenAIBatch, run: Run[InputLine], sink: str) -> str | None:
        if not run.sink_lines[sink]:
            return None
        ttl = self.ctx.config.results_ttl
        expires_after = batch.output_expires_after if ttl is None else int(ttl)
        obj = await anyio.to_thread.run_sync(lambda: self.files.adopt(
            run.sink_path(sink), lines=run.sink_lines[sink], filename=f"{batch.id}_{sink}.jsonl",
            purpose="batch_output", now=self.ctx.clock.now(), expires_after=expires_after))
        return obj.id


class _Rejected(Exception):
    """A request the API refuses; turned into an error envelope by the handler."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def _expiry_seconds(anchor: object, seconds: object, field: str) -> int:
    if anchor not in (None, "created_at"):
        raise _Rejected(400, f"Invalid value for '{field}.anchor': only 'created_at' is supported.",
                        f"{field}.anchor")
    try:
        value = int(str(seconds))
    except ValueError:
        raise _Rejected(400, f"Invalid value for '{field}.seconds': expected an integer.",
                        f"{field}.seconds") from None
    low, high = EXPIRY_RANGE
    if not low <= value <= high:
        raise _Rejected(400, f"Invalid value for '{field}.seconds': must be between {low} and {high}.",
                        f"{field}.seconds")
    return value


def _metadata(value: object) -> dict[str, str] | None:
    """Metadata as the API bounds it: at most 16 pairs, keys <= 64 chars, string values <= 512 chars."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Rejected(400, "Invalid type for 'metadata': expected an object.", "metadata")
    if len(value) > 16:
        raise _Rejected(400, "Invalid 'metadata': at most 16 key-value pairs are allowed.", "metadata")
    for key, item in value.items():
        if len(key) > 64:
            raise _Rejected(400, f"Invalid 'metadata': key {key[:64]!r}... is longer than 64 characters.",
                            "metadata")
        if not isinstance(item, str):
            raise _Rejected(400, f"Invalid 'metadata.{key}': values must be strings.", "metadata")
        if len(item) > 512:
            raise _Rejected(400, f"Invalid 'metadata.{key}': values may be at most 512 characters.", "metadata")
    return dict(value)


def _listed(page: list[Any], has_more: bool) -> web.Response:
    return json_response(ListPage(data=page, first_id=page[0].id if page else None,
                                  last_id=page[-1].id if page else None, has_more=has_more))


def _bad_cursor(after: str | None) -> web.Response:
    return openai_error(400, f"Invalid value for 'after': no object with id {after!r}.", param="after")


def _no_file(request: web.Request) -> web.Response:
    return openai_error(404, f"No such File object: {request.match_info['file_id']}", param="id")


def _no_batch(request: web.Request) -> web.Response:
    return openai_error(404, f"No batch found with id '{request.match_info['batch_id']}'.", param="batch_id")
