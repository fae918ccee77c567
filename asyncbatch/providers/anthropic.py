"""Anthropic Message Batches provider (reference doc sections 3 and 4.2).

Requests are stored as OpenAI batch lines: ``url == "/v1/chat/completions"`` is a chat body, translated by
:mod:`.anthropic_translate`; ``url == "/v1/messages"`` is native Messages ``params``, sent as is. There is
no file upload: ``create`` posts ``{"requests": [...]}`` inline, streamed from the shard's spool file.

Anthropic keeps no batch metadata and restricts ``custom_id`` to ``^[a-zA-Z0-9_-]{1,64}$``, so the id we
send is ours, not the user's: ``wire_id`` is ``f"{token[:16]}-{rid}"`` (the first 16 hex digits of the
shard's token, a dash, the request's integer id in the store). It always matches the pattern, whatever the
user's custom_id, and it carries the shard token, which is how :meth:`AnthropicProvider.find` recognises a
batch whose create reply was lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import msgspec
from msgspec import Meta

from ..errors import BadRequestError, ProviderError, ValidationError
from ..http import Response, RetryPolicy
from ..model import BatchStatus, Outcome, Request, ShardInfo
from ._http import HttpProvider, listed, spooled_array
from ._tokens import FIND_MARGIN, provider_horizon, shard_prefix, token_wire_id
from .anthropic_translate import AnthropicUsage, body_error, translate
from .base import RemoteBatch, ResultLine, ShardLimits

__all__ = ["AnthropicProvider"]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
API_KEY_ENV = "ANTHROPIC_API_KEY"
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
BATCHES = "/v1/messages/batches"
CHAT_URL = "/v1/chat/completions"
MESSAGES_URL = "/v1/messages"
#: 256 MB read as decimal megabytes (the stricter reading), less room for the ``,`` between requests and
#: the ``{"requests":[...]}`` envelope, which the planner's per-line byte count does not see.
MAX_BYTES = 256_000_000 - 6_000_000
DEFAULT_LIMITS = ShardLimits(max_requests=100_000, max_bytes=MAX_BYTES)
#: A running batch of the right size created up to this long before the shard's create began (Anthropic's
#: clock) may be the shard's, and is waited for; an earlier one is a stranger's. Covers the Date header's
#: resolution, the time the create took to arrive, and clocks of workers that differ a little.
UNVERIFIED_WINDOW = 60.0
FIND_PAGE = "100"
LIST_PAGE = "1000"  # the most the listing returns at once

ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_STATUS = {"in_progress": BatchStatus.IN_PROGRESS, "canceling": BatchStatus.CANCELLING}
#: A 400 that bounds the number of requests in a batch ("should have at most 10000 items", "at most 100,000
#: requests"): the batch is too large, not wrong.
_TOO_MANY = re.compile(r"at most [\d,]+ (?:items|requests)")
_OUTCOMES = {"expired": Outcome.EXPIRED, "canceled": Outcome.CANCELLED}

T = TypeVar("T")
_NULL = msgspec.Raw(b"null")


# --- wire structs ----------------------------------------------------------------------------------------


class _RequestCounts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class _MessageBatch(msgspec.Struct):
    id: str
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: _RequestCounts = msgspec.field(default_factory=_RequestCounts)
    created_at: str | None = None
    cancel_initiated_at: str | None = None
    results_url: str | None = None

    @property
    def total(self) -> int:
        return sum(msgspec.structs.astuple(self.request_counts))


class _BatchPage(msgspec.Struct):
    data: list[_MessageBatch]
    has_more: bool = False
    last_id: str | None = None


class _Result(msgspec.Struct, gc=False):
    """``result`` of a results line; ``message`` and ``error`` stay raw: they are the kept bodies."""

    type: str
    message: msgspec.Raw = _NULL
    error: msgspec.Raw = _NULL


class _ResultRow(msgspec.Struct, gc=False):
    custom_id: str
    result: _Result


class _ResultId(msgspec.Struct):
    custom_id: str


class _MessageSummary(msgspec.Struct, gc=False):
    model: str | None = None
    usage: AnthropicUsage | None = None


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _ErrorResponse(msgspec.Struct):
    error: _ErrorDetail = msgspec.field(default_factory=_ErrorDetail)
    request_id: str | None = None


class _NativeParams(msgspec.Struct):
    """What we check synchronously in native ``params``; Anthropic validates the rest when it runs them."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[Any], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    stream: bool | None = None


_row_decoder = msgspec.json.Decoder(_ResultRow)
_summary_decoder = msgspec.json.Decoder(_MessageSummary)
_error_decoder = msgspec.json.Decoder(_ErrorResponse)


# --- provider --------------------------------------------------------------------------------------------


class AnthropicProvider(HttpProvider):
    """Anthropic Message Batches behind the :class:`~asyncbatch.providers.base.Provider` protocol.

    The key comes from ``api_key`` or ``ANTHROPIC_API_KEY`` (sent as ``x-api-key``); a missing key is
    reported at the first network call, so a provider can be built without one (e.g. to show a job). The
    base URL comes from ``base_url``, ``ANTHROPIC_BASE_URL``, else ``https://api.anthropic.com`` (without
    ``/v1``). ``betas`` go out as one ``anthropic-beta`` header; ``default_max_tokens`` fills
    ``max_tokens`` for translated chat bodies that have none.
    """

    name = "anthropic"
    api_key_env = API_KEY_ENV
    #: A batch may answer 404 for a short while after its create (Anthropic's eventual consistency).
    visibility_grace: float = 60.0
    listing_is_whole = True  # list pages hold the same objects as a read, output files included
    #: Seconds results stay downloadable: 29 days after the batch was created (less once it has run a while).
    results_retention: float = 29 * 86400.0

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        anthropic_version: str = "2023-06-01",
        betas: Sequence[str] = (),
        default_max_tokens: int = 4096,
        limits: ShardLimits | None = None,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        visibility_grace: float | None = None,
    ) -> None:
        super().__init__(
            base_url=(base_url or os.environ.get(BASE_URL_ENV) or ANTHROPIC_BASE_URL).rstrip("/"),
            api_key=api_key or os.environ.get(self.api_key_env), retry=retry, max_connections=max_connections,
            timeout=timeout,
        )
        self.limits = limits or DEFAULT_LIMITS
        self.default_max_tokens = default_max_tokens
        self.anthropic_version = anthropic_version
        self.betas = list(betas)
        if visibility_grace is not None:
            self.visibility_grace = visibility_grace
        self._headers = {"anthropic-version": anthropic_version}
        if betas:
            self._headers["anthropic-beta"] = ",".join(betas)

    def __repr__(self) -> str:
        return f"AnthropicProvider(base_url={self.base_url!r})"

    def options(self) -> dict[str, Any]:
        return {
            "anthropic_version": self.anthropic_version,
            "betas": self.betas,
            "default_max_tokens": self.default_max_tokens,
            "limits": {"max_requests": self.limits.max_requests, "max_bytes": self.limits.max_bytes},
            "visibility_grace": self.visibility_grace,
        }

    # --- validation and encoding (no I/O) ----------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Translate (and drop) a chat body, or check native params, so bad requests fail before storing."""
        if request.method != "POST":
            raise ValidationError(f"method must be POST, not {request.method!r}", field="method")
        if request.url == CHAT_URL:
            translate(request.body, default_max_tokens=self.default_max_tokens)
        elif request.url == MESSAGES_URL:
            try:
                native = msgspec.convert(request.body, _NativeParams)
            except msgspec.ValidationError as exc:
                raise body_error(str(exc)) from None
            if native.stream:
                raise ValidationError("streaming is not available in batches", field="body.stream")
        else:
            raise ValidationError(
                f"Anthropic batches run {CHAT_URL} (translated) or {MESSAGES_URL} (native params),"
                f" not {request.url!r}",
                field="url",
            )

    def model_of(self, request: Request) -> str | None:
        model = request.body.get("model")
        return model if isinstance(model, str) else None

    def wire_id(self, custom_id: str, rid: int, token: str) -> str:
        """``f"{token[:16]}-{rid}"``: Anthropic-safe for any custom_id, and it names the shard (see find)."""
        return token_wire_id(token, rid)

    def encode_line(self, wire_id: str, url: str, body: bytes) -> bytes:
        """``{"custom_id", "params"}``: the translated chat body, or native params spliced in as stored."""
        if url == CHAT_URL:
            params = msgspec.json.encode(translate(body, default_max_tokens=self.default_max_tokens))
        elif url == MESSAGES_URL:
            params = body
        else:
            raise ValidationError(f"Anthropic batches cannot run {url!r}", field="url")
        return b"".join((b'{"custom_id":', msgspec.json.encode(wire_id), b',"params":', params, b"}"))

    # --- network -----------------------------------------------------------------------------------------

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, **self._headers}

    def _missing_key(self) -> str:
        return f"no Anthropic API key: pass api_key= or set {self.api_key_env}"

    async def upload(self, shard: ShardInfo) -> None:
        """Nothing to upload: requests travel inline with the create call."""
        return None

    async def create(self, shard: ShardInfo, file_id: str | None = None) -> RemoteBatch:
        """POST the shard's requests, streamed from its spool file (re-read from the start on each try).

        Only failures that surely created nothing are retried here (``idempotent=False``): after a dropped
        connection or a 5xx the batch may exist, so the error goes up and the engine runs :meth:`find`
        before any new create.
        """
        spool = Path(shard.spool_path)
        try:
            response = await self._client().request(
                "POST",
                BATCHES,
                form=lambda: spooled_array(spool, b'{"requests":[', b"]}"),
                headers={"content-type": "application/json"},
                idempotent=False,
            )
        except BadRequestError as exc:
            if exc.status == 413 or _TOO_MANY.search(exc.message):
                # the batch is larger than the account takes (a request-count bound below the documented
                # 100,000 is UNCONFIRMED but possible): said in the engine's word, so that it splits the batch
                raise BadRequestError(exc.message, status=exc.status, code="too_large", type=exc.type,
                                      request_id=exc.request_id) from None
            raise
        return self._normalise(_decode(response, _MessageBatch))

    async def find(self, shard: ShardInfo, exclude: Collection[str] = ()) -> RemoteBatch | None:
        """The batch created for this shard by a create whose reply was lost, if any.

        Anthropic has no metadata, so candidates are the batches that hold exactly ``shard.request_count``
        requests, created since the shard entered ``creating``, judged on Anthropic's own clock (its ``Date``
        header less the time elapsed on ours: our clock is never compared with Anthropic's). An ended candidate
        is verified: the first line of its results must carry this shard's token in its id (one batch holds one
        shard, so one line is proof). A running one cannot be verified yet (results come only once ended): the
        candidate created closest to that moment is returned unverified, and the engine waits for it to end
        rather than guess. Only batches created within ``UNVERIFIED_WINDOW`` before the create can be such a
        candidate, so a stranger's batch of the same size started earlier never holds a shard up.

        A batch created moments ago may not be listed yet (the API answers 404 for it for a while, see
        ``visibility_grace``), and "absent" leads to a second create: so when nothing is found within
        ``visibility_grace`` of ``shard.created_at`` (both on our clock), we wait until then and look once more.
        """
        found = await self._search(shard, exclude)
        wait = min(shard.created_at + self.visibility_grace - time.time(), self.visibility_grace)
        if found is None and wait > 0:
            await anyio.sleep(wait)
            found = await self._search(shard, exclude)
        return found

    async def _search(self, shard: ShardInfo, exclude: Collection[str]) -> RemoteBatch | None:
        unverified: list[_MessageBatch] = []
        creating: float | None = None  # when the shard entered `creating`, on Anthropic's clock
        async with contextlib.aclosing(self._pages(FIND_PAGE)) as pages:
            async for page, headers in pages:
                if creating is None:
                    creating = provider_horizon(headers, shard.created_at, margin=0.0)
                horizon = creating - FIND_MARGIN if creating is not None else None
                in_window = [b for b in page if horizon is None or _timestamp(b.created_at) >= horizon]
                for batch in in_window:
                    if batch.total != shard.request_count or batch.id in exclude:
                        continue
                    if batch.processing_status != "ended":
                        if creating is None or _timestamp(batch.created_at) >= creating - UNVERIFIED_WINDOW:
                            unverified.append(batch)
                    elif (await self._first_wire_id(batch) or "").startswith(shard_prefix(shard.token)):
                        return msgspec.structs.replace(self._normalise(batch), token=shard.token)  # verified
                if len(in_window) < len(page):
                    break
        if not unverified:
            return None
        when = creating if creating is not None else _timestamp(unverified[0].created_at)
        return self._normalise(min(unverified, key=lambda b: abs(_timestamp(b.created_at) - when)))

    async def listing(self) -> AsyncGenerator[list[RemoteBatch], None]:
        """The account's batches, newest first, a page at a time: what the engine's poller reads the statuses
        of many batches from, one call per page."""
        async with contextlib.aclosing(self._pages(LIST_PAGE)) as pages:
            async for page, _ in pages:
                yield listed(page, self._normalise)

    async def _pages(self, size: str) -> AsyncGenerator[tuple[list[_MessageBatch], Mapping[str, str]], None]:
        """The pages of the batch listing, newest first (none empty): (batches, the answer's headers)."""
        http = self._client()
        params = {"limit": size}
        while True:
            response = await http.request("GET", BATCHES, params=params)
            page = _decode(response, _BatchPage)
            if not page.data:
                return
            yield page.data, response.headers
            if not page.has_more:
                return
            params = {"limit": size, "after_id": page.last_id or page.data[-1].id}

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("GET", f"{BATCHES}/{batch_id}")
        return self._normalise(_decode(response, _MessageBatch))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("POST", f"{BATCHES}/{batch_id}/cancel")
        return self._normalise(_decode(response, _MessageBatch))

    async def results(self, batch: RemoteBatch, workdir: Path) -> AsyncGenerator[ResultLine, None]:
        """The results JSONL, decoded as it downloads (nothing is written to ``workdir``). A transfer cut
        short raises a retryable error: the engine starts over, and ingesting a line twice is harmless."""
        blocks = self._client().blocks(batch.output_file_id or f"{BATCHES}/{batch.id}/results")
        async with contextlib.aclosing(blocks):
            async for first, block in blocks:
                for line in _result_lines(first, block):
                    yield line

    # --- helpers -----------------------------------------------------------------------------------------

    async def _first_wire_id(self, batch: _MessageBatch) -> str | None:
        """The custom_id on the first results line, reading no further than that line; None when the
        results are gone (archived), since a batch we cannot ingest is not worth adopting."""
        try:
            head = await self._client().first_line(self._results_path(batch))
        except ProviderError as exc:
            if exc.status in (404, 410):
                return None
            raise
        try:
            return msgspec.json.decode(head, type=_ResultId).custom_id if head else None
        except msgspec.DecodeError:
            return None

    def _results_path(self, batch: _MessageBatch) -> str:
        """``results_url`` as the docs ask, relative to ``base_url`` (what the store keeps survives a move of
        the host, e.g. a local emulator on a new port), unless it points at another host: the key never goes
        elsewhere, the documented path is used instead."""
        url = (batch.results_url or "").removeprefix(self.base_url)
        return url if url.startswith("/") else f"{BATCHES}/{batch.id}/results"

    def _normalise(self, batch: _MessageBatch) -> RemoteBatch:
        ended = batch.processing_status == "ended"
        if ended:
            status = BatchStatus.CANCELLED if batch.cancel_initiated_at else BatchStatus.COMPLETED
        else:
            status = _STATUS[batch.processing_status]
        return RemoteBatch(
            id=batch.id,
            status=status,
            raw_status=batch.processing_status,
            counts={**msgspec.structs.asdict(batch.request_counts), "total": batch.total},
            output_file_id=self._results_path(batch) if ended else None,
            created_at=_timestamp(batch.created_at),
            cancel_requested=batch.cancel_initiated_at is not None,
        )


def _decode(response: Response, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(response.body, type=type_)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"unexpected Anthropic response ({response.status}): {exc}") from None


def _timestamp(value: str | None) -> float:
    """RFC 3339 (``2026-11-20T10:00:00.000000Z``) to Unix seconds."""
    return dt.datetime.fromisoformat(value).timestamp() if value else 0.0


def _result_lines(first: int, block: bytes) -> list[ResultLine]:
    """The lines of a block of results, decoded in two calls: the lines (messages kept raw), then the indexed
    fields of the messages. A block that does not decode so is decoded line by line, which names the line at
    fault."""
    try:
        rows = _row_decoder.decode_lines(block)
        succeeded = [row.result.message for row in rows if _succeeded(row.result)]
        summaries = iter(_summary_decoder.decode_lines(b"\n".join(succeeded)))
        return [_line(row, next(summaries) if _succeeded(row.result) else None) for row in rows]
    except (msgspec.DecodeError, StopIteration):
        return [_result_line(number, raw) for number, raw in enumerate(block.split(b"\n"), first) if raw.strip()]


def _succeeded(result: _Result) -> bool:
    return result.type == "succeeded" and result.message != _NULL


def _result_line(number: int, raw: bytes) -> ResultLine:
    try:
        row = _row_decoder.decode(raw)
        return _line(row, _summary_decoder.decode(row.result.message) if _succeeded(row.result) else None)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"Anthropic results, line {number}: {exc}") from None


def _line(row: _ResultRow, summary: _MessageSummary | None) -> ResultLine:
    """A decoded results line (and the indexed fields of its message, when it succeeded), normalised."""
    result = row.result
    if summary is not None:
        return ResultLine(
            wire_id=row.custom_id,
            outcome=Outcome.SUCCEEDED,
            status_code=200,
            body=result.message,
            usage=summary.usage.normalise() if summary.usage else None,
            model=summary.model,
        )
    if result.type == "errored":
        envelope = _error_decoder.decode(result.error) if result.error != _NULL else _ErrorResponse()
        return ResultLine(
            wire_id=row.custom_id,
            outcome=Outcome.ERRORED,
            status_code=ERROR_STATUS.get(envelope.error.type),
            body=result.error if result.error != _NULL else None,
            error_code=envelope.error.type,
            error_message=envelope.error.message,
            request_id=envelope.request_id,
        )
    return ResultLine(
        wire_id=row.custom_id,
        outcome=_OUTCOMES.get(result.type, Outcome.FAILED),
        error_code=result.type,
    )
