"""The Anthropic Message Batches API (reference doc sections 3 and 4.2), under ``/v1/messages/batches``.

Create spools the body to disk and reads its ``requests`` array as a stream; custom_id pattern and
uniqueness and the required params (model, messages, max_tokens >= 1) are checked there (400 naming the
index); other params problems come back asynchronously as ``errored`` results. A batch is ``in_progress``
until ``complete_after`` (no validating phase: the API has none), requests run evenly meanwhile, then it is
``ended`` and its results JSONL is served at ``results_url``. Request counts other than ``processing`` stay 0
until the batch has ended, as the API documents.
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
from .bodies import anthropic_message, check_anthropic
from .config import EmulatorConfig
from .core import Context
from .envelopes import anthropic_error, anthropic_error_body, request_id
from .files import CHUNK, stream_file
from .jsonstream import JSONStreamError, iter_array
from .ledger import BatchRecord
from .outcomes import Decision, anthropic_identity
from .routes import RouteSpec
from .runs import Run, Written, progress

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
WINDOW = 24 * 3600
RESULTS_KEPT = 29 * 86400  # results can be downloaded for 29 days after the batch was created


def rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- wire objects ----------------------------------------------------------------------------------------


class RequestCounts(msgspec.Struct, kw_only=True):
    processing: int
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class MessageBatch(msgspec.Struct, kw_only=True):
    """The MessageBatch object, field for field (reference doc 3.3)."""

    id: str
    processing_status: str
    request_counts: RequestCounts
    ended_at: str | None
    created_at: str | None
    expires_at: str | None
    cancel_initiated_at: str | None
    archived_at: str | None
    results_url: str | None
    type: str = "message_batch"


class BatchPage(msgspec.Struct, kw_only=True):
    data: list[MessageBatch]
    has_more: bool
    first_id: str | None
    last_id: str | None


class DeletedBatch(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message_batch_deleted"


class _RequestItem(msgspec.Struct):
    custom_id: Any = None
    params: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when absent


class _ParamsHead(msgspec.Struct):
    model: Any = None
    messages: Any = None
    max_tokens: Any = None


class SpooledRequest(msgspec.Struct):
    """One request as spooled at create (the exact params bytes the client sent)."""

    custom_id: str
    params: msgspec.Raw


class ParsedRequest(msgspec.Struct):
    custom_id: str
    identity: str
    params: dict[str, Any]


class _Result(msgspec.Struct, omit_defaults=True):
    type: str
    error: Any = None


# A success line as ``_ResultLine`` would encode it, put together around its custom_id and message (one per
# request: see ``bodies._CHAT``).
_SUCCESS_LINE = (b'{"custom_id":', b',"result":{"type":"succeeded","message":', b"}}")


class _ResultLine(msgspec.Struct):
    custom_id: str
    result: _Result


# --- create ----------------------------------------------------------------------------------------------


class Invalid(Exception):
    """A create the API rejects with 400 invalid_request_error."""


def _check_request(index: int, item: _RequestItem, seen: set[str]) -> None:
    where = f"requests.{index}"
    if item.custom_id is None:
        raise Invalid(f"{where}.custom_id: Field required")
    if not isinstance(item.custom_id, str) or not CUSTOM_ID.match(item.custom_id):
        raise Invalid(f"{where}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'")
    if item.custom_id in seen:
        raise Invalid(f"{where}.custom_id: Duplicate custom_id {item.custom_id!r}: custom_id must be unique "
                      "within a Message Batch")
    seen.add(item.custom_id)
    if not item.params:
        raise Invalid(f"{where}.params: Field required")
    try:
        head = msgspec.json.decode(item.params, type=_ParamsHead)
    except msgspec.ValidationError:
        raise Invalid(f"{where}.params: Input should be a valid dictionary") from None
    if head.model is None:
        raise Invalid(f"{where}.params.model: Field required")
    if not isinstance(head.model, str):
        raise Invalid(f"{where}.params.model: Input should be a valid string")
    if head.messages is None:
        raise Invalid(f"{where}.params.messages: Field required")
    if not isinstance(head.messages, list):
        raise Invalid(f"{where}.params.messages: Input should be a valid list")
    if head.max_tokens is None:
        raise Invalid(f"{where}.params.max_tokens: Field required")
    if not isinstance(head.max_tokens, int) or isinstance(head.max_tokens, bool):
        raise Invalid(f"{where}.params.max_tokens: Input should be a valid integer")
    if head.max_tokens < 1:
        raise Invalid(f"{where}.params.max_tokens: Input should be greater than or equal to 1")


def spool_requests(body: Path, target: Path, config: EmulatorConfig) -> array[int]:
    """Check every request of a create body and write them as JSONL to ``target``; return line offsets."""
    offsets: array[int] = array("q")
    seen: set[str] = set()
    with open(body, "rb") as source, open(target, "wb") as out:
        try:
            for index, raw in enumerate(iter_array(source, "requests", first_keys=("custom_id", "params"))):
                if index >= config.anthropic_max_requests:
                    raise Invalid(f"requests: a Message Batch may hold at most {config.anthropic_max_requests:,} "
                                  "requests")
                try:
                    item = msgspec.json.decode(raw, type=_RequestItem)
                except msgspec.ValidationError:
                    raise Invalid(f"requests.{index}: Input should be a valid dictionary") from None
                except msgspec.DecodeError:
                    raise Invalid(f"requests.{index}: invalid JSON") from None
                _check_request(index, item, seen)
                offsets.append(out.tell())
                out.write(msgspec.json.encode(SpooledRequest(item.custom_id, item.params)))
                out.write(b"\n")
        except JSONStreamError as exc:
            raise Invalid(str(exc)) from None
    if not offsets:
        raise Invalid("requests: List should have at least 1 item after validation, not 0")
    return offsets


# --- runs ------------------------------------------------------------------------------------------------


class AnthropicLines:
    """``LineFormat`` of Message Batches: one ``results`` sink, one line per request."""

    provider = "anthropic"

    def parse(self, raw: bytes) -> ParsedRequest:
        spooled = msgspec.json.decode(raw, type=SpooledRequest)
        params = msgspec.json.decode(spooled.params)
        return ParsedRequest(custom_id=spooled.custom_id, identity=anthropic_identity(params), params=params)

    def check(self, parsed: ParsedRequest) -> Decision | None:
        return check_anthropic(parsed.params)

    def ran(self, parsed: ParsedRequest, decision: Decision) -> Written:
        if decision.outcome is Outcome.SUCCEEDED:
            message = anthropic_message(parsed.params)
            line = b"".join((_SUCCESS_LINE[0], msgspec.json.encode(parsed.custom_id), _SUCCESS_LINE[1], message.raw,
                             _SUCCESS_LINE[2]))
            return Written(line, "results", message.input_tokens, message.output_tokens)
        error = anthropic_error_body(decision.status or 500, decision.message, request_id())
        return self._line(parsed, _Result("errored", error=error))

    def not_run(self, parsed: ParsedRequest, outcome: Outcome) -> Written:
        return self._line(parsed, _Result("canceled" if outcome is Outcome.CANCELLED else "expired"))

    @staticmethod
    def _line(parsed: ParsedRequest, result: _Result, used: int = 0, produced: int = 0) -> Written:
        return Written(msgspec.json.encode(_ResultLine(parsed.custom_id, result)), "results", used, produced)


class AnthropicBatch:
    def __init__(self, *, batch_id: str, ordinal: int, created_at: float, run: Run[ParsedRequest]) -> None:
        self.id = batch_id
        self.ordinal = ordinal
        self.created_at = created_at
        self.expires_at = created_at + WINDOW
        self.status = "in_progress"
        self.ended_at: float | None = None
        self.cancel_initiated_at: float | None = None
        self.run = run
        self.lock = anyio.Lock()

    def view(self, base_url: str) -> MessageBatch:
        run = self.run
        if self.status == "ended":
            counts = RequestCounts(
                processing=0, succeeded=run.counts[Outcome.SUCCEEDED], errored=run.counts[Outcome.ERRORED],
                canceled=run.counts[Outcome.CANCELLED], expired=run.counts[Outcome.EXPIRED])
        else:
            counts = RequestCounts(processing=run.total)
        return MessageBatch(
            id=self.id, processing_status=self.status, request_counts=counts, ended_at=rfc3339(self.ended_at),
            created_at=rfc3339(self.created_at), expires_at=rfc3339(self.expires_at),
            cancel_initiated_at=rfc3339(self.cancel_initiated_at), archived_at=None,
            results_url=f"{base_url}/v1/messages/batches/{self.id}/results" if self.status == "ended" else None,
        )


class AnthropicAPI:
    """Handlers of ``/v1/messages/batches``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.workdir = ctx.data_dir / "anthropic-runs"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.batches: dict[str, AnthropicBatch] = {}

    def routes(self) -> list[RouteSpec]:
        p, base = "anthropic", "/v1/messages/batches"
        return [
            RouteSpec("POST", base, self.create, p, "anthropic_create", creates=True),
            RouteSpec("GET", base, self.list_batches, p, "anthropic_read"),
            RouteSpec("GET", base + "/{batch_id}", self.get, p, "anthropic_read"),
            RouteSpec("POST", base + "/{batch_id}/cancel", self.cancel, p, "anthropic_cancel"),
            RouteSpec("DELETE", base + "/{batch_id}", self.delete, p, "anthropic_delete"),
            RouteSpec("GET", base + "/{batch_id}/results", self.results, p, "anthropic_results", download=True),
        ]

    async def create(self, request: web.Request) -> web.Response:
        limit = self.ctx.config.anthropic_max_body_bytes
        too_large = f"Request exceeds the maximum allowed size of {limit // (1024 * 1024)} MB."
        if request.content_length is not None and request.content_length > limit:
            return anthropic_error(request, 413, too_large)
        batch_id = "msgbatch_01" + secrets.token_hex(11)
        body = self.workdir / f"{batch_id}.body.json"
        spool = self.workdir / f"{batch_id}.requests.jsonl"
        try:
            size = 0
            async with await anyio.open_file(body, "wb") as out:
                async for chunk in request.content.iter_chunked(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        return anthropic_error(request, 413, too_large)
                    await out.write(chunk)
            offsets = await anyio.to_thread.run_sync(spool_requests, body, spool, self.ctx.config)
        except Invalid as exc:
            spool.unlink(missing_ok=True)
            return anthropic_error(request, 400, str(exc))
        finally:
            body.unlink(missing_ok=True)
        ordinal, now = self.ctx.next_ordinal(), self.ctx.clock.now()
        run = Run(fmt=AnthropicLines(), batch_id=batch_id, input_path=spool, offsets=offsets, workdir=self.workdir,
                  shuffle_seed=f"{self.ctx.config.seed}:{ordinal}")
        batch = self.batches[batch_id] = AnthropicBatch(batch_id=batch_id, ordinal=ordinal, created_at=now, run=run)
        self.ctx.ledger.add_batch(BatchRecord(
            id=batch_id, provider="anthropic", ordinal=ordinal, created_at=now, endpoint="/v1/messages",
            metadata=None, request_count=run.total, status=batch.status))
        return json_response(batch.view(_base(request)))

    async def get(self, request: web.Request) -> web.Response:
        batch = self._visible(request)
        if batch is None:
            return _not_found(request)
        await self.advance(batch)
        return json_response(batch.view(_base(request)))

    async def list_batches(self, request: web.Request) -> web.Response:
        try:
            limit = query_int(request, "limit", 20, 1, 1000)
        except ValueError as exc:
            return anthropic_error(request, 400, f"limit: {exc}")
        items = list(reversed(self.batches.values()))
        ids = [b.id for b in items]
        before, after = request.query.get("before_id"), request.query.get("after_id")
        cursor = after or before
        if cursor is not None and cursor not in ids:
            return anthropic_error(request, 400, f"{'after_id' if after else 'before_id'}: no Message Batch with "
                                   f"id {cursor!r}")
        if after:
            start = ids.index(after) + 1
            page, has_more = items[start:start + limit], start + limit < len(items)
        elif before:
            end = ids.index(before)
            page, has_more = items[max(0, end - limit):end], end - limit > 0
        else:
            page, has_more = items[:limit], limit < len(items)
        for batch in page:
            await self.advance(batch)
        base = _base(request)
        return json_response(BatchPage(data=[b.view(base) for b in page], has_more=has_more,
                                       first_id=page[0].id if page else None,
                                       last_id=page[-1].id if page else None))

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found(request)
        await self.advance(batch)
        async with batch.lock:
            if batch.status == "ended":
                return anthropic_error(request, 400, f"Message Batch {batch.id} has already ended and cannot be "
                                       "canceled.")
            if batch.status == "in_progress":
                batch.status = "canceling"
                batch.cancel_initiated_at = self.ctx.clock.now()
                self.ctx.ledger.update_batch(batch.id, status=batch.status)
        return json_response(batch.view(_base(request)))

    async def delete(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found(request)
        await self.advance(batch)
        if batch.status != "ended":
            return anthropic_error(request, 400, f"Message Batch {batch.id} is still processing; cancel it and "
                                   "wait for it to end before deleting it.")
        del self.batches[batch.id]
        batch.run.input_path.unlink(missing_ok=True)
        batch.run.sink_path("results").unlink(missing_ok=True)
        return json_response(DeletedBatch(id=batch.id))

    async def results(self, request: web.Request) -> web.StreamResponse:
        batch = self._visible(request)
        if batch is None:
            return _not_found(request)
        await self.advance(batch)
        if batch.status != "ended":
            return anthropic_error(request, 400, f"Message Batch {batch.id} has not ended yet; results are "
                                   "available once processing_status is 'ended'.")
        ttl = self.ctx.config.results_ttl
        assert batch.ended_at is not None
        available_until = batch.created_at + RESULTS_KEPT if ttl is None else batch.ended_at + ttl
        if self.ctx.clock.now() >= available_until:
            return anthropic_error(request, 404, f"The results of Message Batch {batch.id} are no longer "
                                   "available.")
        return await stream_file(request, batch.run.sink_path("results"), "application/binary")

    def _visible(self, request: web.Request) -> AnthropicBatch | None:
        """The batch, unless it was created less than ``anthropic_404_after_create`` seconds ago."""
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None or self.ctx.clock.now() < batch.created_at + self.ctx.config.anthropic_404_after_create:
            return None
        return batch

    async def advance(self, batch: AnthropicBatch) -> None:
        """Bring ``batch`` up to date with the clock: run requests, end it."""
        async with batch.lock:
            config, now = self.ctx.config, self.ctx.clock.now()
            if batch.status == "in_progress":
                step = await progress(batch.run, ordinal=batch.ordinal, start=batch.created_at,
                                      created_at=batch.created_at, expires_at=batch.expires_at, now=now,
                                      ledger=self.ctx.ledger, config=config)
                if step.ended:
                    await self._end(batch, Outcome.EXPIRED, step.deadline)
            elif batch.status == "canceling":
                assert batch.cancel_initiated_at is not None
                done_at = batch.cancel_initiated_at + config.cancel_after
                if now >= done_at:
                    await self._end(batch, Outcome.CANCELLED, done_at)

    async def _end(self, batch: AnthropicBatch, unrun: Outcome, at: float) -> None:
        await anyio.to_thread.run_sync(
            functools.partial(batch.run.finish, unrun, self.ctx.ledger, strays=self.ctx.config.stray_results))
        batch.status, batch.ended_at = "ended", at
        self.ctx.ledger.update_batch(batch.id, status="ended")


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _not_found(request: web.Request) -> web.Response:
    return anthropic_error(request, 404, f"Message Batch {request.match_info['batch_id']} not found.")

