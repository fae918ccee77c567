"""Gemini API Batch Mode provider (reference: more-providers-gateway-postgres.md, part B).

Requests are stored as OpenAI batch lines: ``/v1/chat/completions`` and ``/v1/embeddings`` bodies are
translated by :mod:`.gemini_translate`; ``/v1/models/{model}:generateContent`` and ``:embedContent`` (or
``/v1beta/...``) carry native ``GenerateContentRequest`` / ``EmbedContentRequest`` bodies, sent as they are.
:meth:`GeminiProvider.native_request` turns a line of Gemini's own ``{"key", "request"}`` format into one.

A shard whose input is at most ``inline_max_bytes`` is sent inline (``inputConfig.requests``, each request
keyed by ``metadata.key``); a larger one, and every embeddings shard (inline embedding requests carry no key,
and results are never joined by order), is uploaded through the Files API's resumable protocol and sent as
``inputConfig.fileName``. The batch is a long-running Operation, read as raw JSON: the SDK drops its
``batchStats`` and ``error``. Results come from the generated responses file, streamed, or from the Operation's
inlined responses, and are joined by key.

The key sent for each request is ``f"{token[:16]}-{rid}"`` (:mod:`._tokens`), never the user's custom_id
(which may be long or odd): it carries the shard token, and so does the batch's ``displayName``
(``asyncbatch <job id> <token>``), which is how :meth:`GeminiProvider.find` recognises a batch whose create
reply was lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec

from ..errors import ProviderError, ValidationError
from ..http import Response, RetryPolicy
from ..model import BatchStatus, Outcome, Request, ShardInfo
from ._http import BODY_BLOCK, HttpProvider, listed
from ._tokens import provider_horizon, token_wire_id
from .base import BatchError, RemoteBatch, ResultLine, ShardLimits
from .gemini_translate import GeminiUsage, translate_chat, translate_embedding

__all__ = ["GeminiProvider", "grpc_http_status"]

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_ENV = "GEMINI_BASE_URL"
#: google-genai 3.6.1 calls batches on ``v1`` (its GOOGLE_AI_API_DEFAULT_VERSION) while the REST reference
#: shows ``v1beta``; we follow the SDK, the one that is known to run. ``api_version="v1beta"`` switches.
API_VERSION = "v1"
CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
_NATIVE_URL = re.compile(r"^/(?:v1|v1beta)/models/(?P<model>[^/:]+):(?P<method>generateContent|embedContent)$")
_MiB = 1024 * 1024
#: Inline requests must total under 20 MB; each request also gains ``{"metadata":{"key":...}}`` on the way.
INLINE_MAX_BYTES = 16 * _MiB
#: 2 GB per input file; requests per batch are not documented, so a conservative count (configurable).
DEFAULT_LIMITS = ShardLimits(max_requests=100_000, max_bytes=2_000_000_000 - 64 * _MiB)
#: Files, the generated responses file included, are deleted 48 h after they were made.
RESULTS_RETENTION = 48 * 3600.0
UPLOAD_CHUNK = 8 * _MiB
FIND_PAGE = "100"
DISPLAY_PREFIX = "asyncbatch "

_STATES = {
    "UNSPECIFIED": BatchStatus.VALIDATING,
    "PENDING": BatchStatus.VALIDATING,
    "RUNNING": BatchStatus.IN_PROGRESS,
    "SUCCEEDED": BatchStatus.COMPLETED,
    "FAILED": BatchStatus.FAILED,
    "CANCELLED": BatchStatus.CANCELLED,
    "EXPIRED": BatchStatus.EXPIRED,
}
#: google.rpc.Code -> the HTTP status Google's REST APIs give it, so that the engine's retry rules (4xx final,
#: 408/429/5xx retried) apply to per-request errors as to OpenAI's.
GRPC_HTTP = {
    1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400, 12: 501,
    13: 500, 14: 503, 15: 500, 16: 401,
}
GRPC_NAMES = {
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
#: Batch-level failures whose requests would fail the same way again (RetryStrategy.permanent_batch_errors).
_PERMANENT_BATCH = {"INVALID_ARGUMENT": "invalid_request", "FAILED_PRECONDITION": "invalid_request",
                    "NOT_FOUND": "model_not_found", "PERMISSION_DENIED": "input_no_permissions"}

T = TypeVar("T")
_NULL = msgspec.Raw(b"null")


def grpc_http_status(code: int | None, status: str | None = None) -> int:
    """The HTTP status of a ``google.rpc.Status``: by its ``status`` name, else its code (a code of 100 and
    more is an HTTP status already: some documents put those there)."""
    if status in GRPC_NAMES:
        return GRPC_HTTP[GRPC_NAMES[status]]
    if code is not None and code >= 100:
        return code
    return GRPC_HTTP.get(code or 2, 500)


# --- wire structs ----------------------------------------------------------------------------------------


class _BatchStats(msgspec.Struct, rename="camel"):
    """int64 counters, serialised as JSON strings."""

    request_count: int | str = 0
    successful_request_count: int | str = 0
    failed_request_count: int | str = 0
    pending_request_count: int | str = 0


class _Output(msgspec.Struct, rename="camel"):
    responses_file: str | None = None
    inlined_responses: msgspec.Raw = _NULL  # {"inlinedResponses": [...]}: decoded only when results are read


class _BatchMetadata(msgspec.Struct, rename="camel"):
    display_name: str = ""
    state: str = "BATCH_STATE_UNSPECIFIED"
    create_time: str | None = None
    batch_stats: _BatchStats | None = None
    output: _Output | None = None


class _Status(msgspec.Struct, gc=False):
    """``google.rpc.Status``."""

    code: int | None = None
    message: str = ""
    status: str | None = None


class _Operation(msgspec.Struct):
    name: str
    metadata: _BatchMetadata = msgspec.field(default_factory=_BatchMetadata)
    done: bool = False
    response: _Output | None = None
    error: _Status | None = None

    @property
    def output(self) -> _Output | None:
        return self.response or self.metadata.output


class _OperationPage(msgspec.Struct, rename="camel"):
    operations: list[_Operation] = msgspec.field(default_factory=list)
    next_page_token: str | None = None


class _Inlined(msgspec.Struct, rename="camel"):
    inlined_responses: list[msgspec.Raw] = msgspec.field(default_factory=list)


class _UploadedFile(msgspec.Struct):
    name: str


class _UploadReply(msgspec.Struct):
    file: _UploadedFile


class _ResultRow(msgspec.Struct, gc=False):
    """A responses-file line ``{key, response|error}``, or an inlined response ``{metadata: {key}, ...}``."""

    key: str | None = None
    metadata: dict[str, str] | None = None
    response: msgspec.Raw = _NULL
    error: _Status | None = None


class _ResponseSummary(msgspec.Struct, rename="camel", gc=False):
    usage_metadata: GeminiUsage | None = None
    model_version: str | None = None


class _FileLine(msgspec.Struct):
    key: str
    request: msgspec.Raw


class _NativeLine(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    request: dict[str, Any]


_row_decoder = msgspec.json.Decoder(_ResultRow)
_summary_decoder = msgspec.json.Decoder(_ResponseSummary)
_file_line = msgspec.json.Decoder(_FileLine)


class _Route(NamedTuple):
    """What a stored request is: translated or native, content generation or embedding."""

    embed: bool
    native: bool
    model: str | None


# --- provider --------------------------------------------------------------------------------------------


class GeminiProvider(HttpProvider):
    """The Gemini API's Batch Mode behind the :class:`~asyncbatch.providers.base.Provider` protocol.

    The key comes from ``api_key``, ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY`` (sent as ``x-goog-api-key``) and
    from no other variable; a missing key is reported at the first network call. The base URL (the host, with
    no version) comes from ``base_url``, ``GEMINI_BASE_URL``, else ``https://generativelanguage.googleapis.com``.
    """

    name = "gemini"
    api_key_env = "GEMINI_API_KEY"
    visibility_grace: float = 30.0
    #: Seconds the results of an ended batch stay downloadable (the engine ingests before they go).
    results_retention: float = RESULTS_RETENTION

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        api_version: str = API_VERSION,
        limits: ShardLimits | None = None,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
    ) -> None:
        key = api_key or next((os.environ[k] for k in KEY_ENVS if os.environ.get(k)), None)
        super().__init__(
            base_url=(base_url or os.environ.get(BASE_URL_ENV) or GEMINI_BASE_URL).rstrip("/"), api_key=key,
            retry=retry, max_connections=max_connections, timeout=timeout,
        )
        if api_version not in ("v1", "v1beta"):
            raise ValidationError("api_version must be 'v1' or 'v1beta'", field="api_version")
        self.api_version = api_version
        self.limits = limits or DEFAULT_LIMITS
        self.inline_max_bytes = inline_max_bytes

    def __repr__(self) -> str:
        return f"GeminiProvider(base_url={self.base_url!r})"

    def options(self) -> dict[str, Any]:
        return {
            "api_version": self.api_version,
            "inline_max_bytes": self.inline_max_bytes,
            "limits": {"max_requests": self.limits.max_requests, "max_bytes": self.limits.max_bytes},
        }

    # --- validation and encoding (no I/O) ----------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Translate (and drop) an OpenAI body, or look at a native one, so bad requests fail before storing."""
        if request.method != "POST":
            raise ValidationError(f"method must be POST, not {request.method!r}", field="method")
        route = _route(request.url, request.body)
        if route.model is None:
            raise ValidationError(f"{request.url} needs a model", field="body.model")
        if route.native:
            if request.body.get("stream") not in (None, False):
                raise ValidationError("streaming is not available in batches", field="body.stream")
        elif route.embed:
            translate_embedding(request.body)
        else:
            translate_chat(request.body)

    def model_of(self, request: Request) -> str | None:
        return _route(request.url, request.body).model

    def wire_id(self, custom_id: str, rid: int, token: str) -> str:
        """``f"{token[:16]}-{rid}"``: any custom_id fits, and every key names its shard."""
        return token_wire_id(token, rid)

    def encode_line(self, wire_id: str, url: str, body: bytes) -> bytes:
        """A responses-file input line ``{"key", "request"}``: translated, or native spliced in as stored."""
        if url == CHAT_URL:
            request = msgspec.json.encode(translate_chat(body))
        elif url == EMBEDDINGS_URL:
            request = msgspec.json.encode(translate_embedding(body))
        else:
            _route(url, {})  # a native url, or a ValidationError
            request = body
        return b"".join((b'{"key":', msgspec.json.encode(wire_id), b',"request":', request, b"}"))

    def native_request(self, line: Mapping[str, Any], *, model: str | None = None) -> Request:
        """A line of Gemini's own batch input format, ``{"key": ..., "request": <GenerateContentRequest>}``, as a
        Request: ``key`` becomes the custom_id, and the model is ``request.model`` or ``model``."""
        try:
            native = msgspec.convert(dict(line), _NativeLine)
        except msgspec.ValidationError as exc:
            raise ValidationError(f"not a Gemini batch line: {exc}", field="request") from None
        named = native.request.pop("model", None) or model
        if not isinstance(named, str) or not named:
            raise ValidationError("the line names no model: pass model=", custom_id=native.key, field="request.model")
        method = "embedContent" if "content" in native.request and "contents" not in native.request else (
            "generateContent")
        url = f"/{self.api_version}/models/{named.removeprefix('models/')}:{method}"
        return Request(custom_id=native.key, url=url, body=native.request)

    # --- network -----------------------------------------------------------------------------------------

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-goog-api-key": api_key}

    def _missing_key(self) -> str:
        return "no Gemini API key: pass api_key= or set GEMINI_API_KEY (or GOOGLE_API_KEY)"

    def _path(self, name: str) -> str:
        return f"/{self.api_version}/{name}"

    def _file_path(self, file_id: str) -> str:
        return self._path(file_id)  # file ids are resource names: ``files/abc``

    async def upload(self, shard: ShardInfo) -> str | None:
        """Nothing for a small generateContent shard (sent inline); else the resumable upload of its file."""
        spool = Path(shard.spool_path)
        size = (await anyio.Path(spool).stat()).st_size
        if size <= self.inline_max_bytes and not _route(shard.endpoint, {}).embed:
            return None
        return await self._upload_file(spool, size, f"{shard.job_id}-{shard.id}.jsonl")

    async def _upload_file(self, spool: Path, size: int, display_name: str) -> str:
        """Start a resumable session, then send the file as one final chunk (the session URL is rewritten onto
        ``base_url``, as the SDK does: the key never goes to another host)."""
        http = self._client()
        start = await http.request(
            "POST", f"/upload/{self.api_version}/files",
            json={"file": {"display_name": display_name, "mime_type": "application/jsonl", "size_bytes": size}},
            headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                     "X-Goog-Upload-Header-Content-Length": str(size),
                     "X-Goog-Upload-Header-Content-Type": "application/jsonl"},
        )
        session = _header(start, "x-goog-upload-url")
        if not session:
            raise ProviderError("the Gemini upload start gave no x-goog-upload-url")
        base = urlsplit(self.base_url)
        path = urlunsplit(urlsplit(session)._replace(scheme=base.scheme, netloc=base.netloc))
        opened: list[BinaryIO] = []

        def data() -> BinaryIO:
            handle = spool.open("rb")
            opened.append(handle)
            return handle

        try:
            reply = await http.request(
                "POST", path, form=data,
                headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0",
                         "content-type": "application/jsonl"},
            )
        finally:
            for handle in opened:
                handle.close()
        if _header(reply, "x-goog-upload-status") != "final":
            raise ProviderError("the Gemini upload did not end final")
        return _decode(reply, _UploadReply).file.name

    async def create(self, shard: ShardInfo, file_id: str | None = None) -> RemoteBatch:
        """POST ``models/{model}:batchGenerateContent`` (or ``:asyncBatchEmbedContent``), naming the uploaded
        file or streaming the inline requests from the spool file. Only failures that surely created nothing
        are retried here (``idempotent=False``); after an ambiguous one the engine runs :meth:`find`."""
        route = _route(shard.endpoint, {})
        model = (shard.model or route.model or "").removeprefix("models/")
        if not model:
            raise ValueError("a Gemini batch needs a model")
        method = "asyncBatchEmbedContent" if route.embed else "batchGenerateContent"
        path = self._path(f"models/{model}:{method}")
        display = msgspec.json.encode(_display_name(shard))
        if file_id is not None:
            head = b'{"batch":{"displayName":' + display + b',"inputConfig":{"fileName":'
            body = head + msgspec.json.encode(file_id) + b"}}}"
            form: Any = lambda: body  # noqa: E731
        else:
            spool = Path(shard.spool_path)
            form = lambda: _inline_body(display, spool)  # noqa: E731
        response = await self._client().request("POST", path, form=form, headers={"content-type": "application/json"},
                                                 idempotent=False)
        return self._normalise(_decode(response, _Operation))

    async def find(self, shard: ShardInfo, exclude: Collection[str] = ()) -> RemoteBatch | None:
        """The batch whose ``displayName`` carries this shard's token, searching the listing newest first.

        Paging stops past the shard's ``creating`` moment moved onto Gemini's clock (its ``Date`` header less
        the time elapsed on ours, see :func:`._tokens.provider_horizon`): our clock is never compared with
        Google's. Without that header the whole listing is searched.
        """
        wanted = _display_name(shard)
        async with contextlib.aclosing(self._pages()) as pages:
            async for operations, headers in pages:
                for operation in operations:
                    if operation.metadata.display_name == wanted and operation.name not in exclude:
                        return self._normalise(operation)
                horizon = provider_horizon(headers, shard.created_at)
                last = operations[-1].metadata.create_time
                if horizon is not None and last and _timestamp(last) < horizon:
                    return None
        return None

    async def listing(self) -> AsyncGenerator[list[RemoteBatch], None]:
        """The project's batches, newest first, a page at a time: what the engine's poller reads the statuses
        of many batches from, one call per page."""
        async with contextlib.aclosing(self._pages()) as pages:
            async for operations, _ in pages:
                yield listed(operations, self._normalise)

    async def _pages(self) -> AsyncGenerator[tuple[list[_Operation], Mapping[str, str]], None]:
        """The pages of the batch listing, newest first (none empty): (operations, the answer's headers)."""
        http = self._client()
        params = {"pageSize": FIND_PAGE}
        while True:
            response = await http.request("GET", self._path("batches"), params=params)
            page = _decode(response, _OperationPage)
            if not page.operations:
                return
            yield page.operations, response.headers
            if not page.next_page_token:
                return
            params = {"pageSize": FIND_PAGE, "pageToken": page.next_page_token}

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("GET", self._path(batch_id))
        return self._normalise(_decode(response, _Operation))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        """``:cancel`` answers with an empty object; the batch is read back for its state."""
        await self._client().request("POST", self._path(f"{batch_id}:cancel"))
        return await self.retrieve(batch_id)

    async def results(self, batch: RemoteBatch, workdir: Path) -> AsyncGenerator[ResultLine, None]:
        """The responses file, decoded as it downloads (``files/{id}:download?alt=media``), or the inlined
        responses of the Operation. A transfer cut short raises a retryable error: the engine starts over."""
        if batch.output_file_id:
            lines = self._client().lines(self._path(f"{batch.output_file_id}:download?alt=media"))
            async with contextlib.aclosing(lines):
                async for number, line in lines:
                    yield _result_line(f"{batch.output_file_id}, line {number}", line)
            return
        response = await self._client().request("GET", self._path(batch.id))
        output = _decode(response, _Operation).output
        if output is None or output.inlined_responses == _NULL:
            return
        inlined = _decode_raw(output.inlined_responses, _Inlined, batch.id)
        for index, item in enumerate(inlined.inlined_responses):
            yield _result_line(f"{batch.id}, inlined response {index}", item)

    # --- normalisation -----------------------------------------------------------------------------------

    def _normalise(self, operation: _Operation) -> RemoteBatch:
        meta = operation.metadata
        state = meta.state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
        status = _STATES.get(state)
        if status is None:
            raise ProviderError(f"Gemini batch {operation.name} has unknown state {meta.state!r}")
        stats = meta.batch_stats
        counts = {} if stats is None else {
            "total": int(stats.request_count), "completed": int(stats.successful_request_count),
            "failed": int(stats.failed_request_count), "pending": int(stats.pending_request_count),
        }
        errors = []
        if operation.error is not None:
            name = operation.error.status or next(
                (k for k, v in GRPC_NAMES.items() if v == operation.error.code), "UNKNOWN")
            errors.append(BatchError(code=_PERMANENT_BATCH.get(name, name.lower()), message=operation.error.message))
        output = operation.output
        display = meta.display_name
        return RemoteBatch(
            id=operation.name,
            status=status,
            raw_status=meta.state,
            counts=counts,
            output_file_id=output.responses_file if output else None,
            errors=errors,
            created_at=_timestamp(meta.create_time),
            token=display.rsplit(" ", 1)[-1] if display.startswith(DISPLAY_PREFIX) else None,
            cancel_requested=status is BatchStatus.CANCELLED,
        )


def _route(url: str, body: Mapping[str, Any]) -> _Route:
    if url in (CHAT_URL, EMBEDDINGS_URL):
        model = body.get("model")
        named = model.removeprefix("models/") if isinstance(model, str) and model else None
        return _Route(embed=url == EMBEDDINGS_URL, native=False, model=named)
    native = _NATIVE_URL.match(url)
    if native is None:
        raise ValidationError(
            f"Gemini batches run {CHAT_URL}, {EMBEDDINGS_URL} (translated) or /v1/models/{{model}}:generateContent"
            f" and :embedContent (native), not {url!r}",
            field="url",
        )
    return _Route(embed=native["method"] == "embedContent", native=True, model=native["model"])


def _display_name(shard: ShardInfo) -> str:
    return f"{DISPLAY_PREFIX}{shard.job_id} {shard.token}"


async def _inline_body(display: bytes, spool: Path) -> AsyncIterator[bytes]:
    """``{"batch": {..., "inputConfig": {"requests": {"requests": [...]}}}}`` from the spool file, a block at a
    time, each ``{"key", "request"}`` line turned into ``{"request", "metadata": {"key"}}``."""
    yield b'{"batch":{"displayName":' + display + b',"inputConfig":{"requests":{"requests":['
    separator = b""
    held = b""  # the start of a line that the block cut
    async with await anyio.open_file(spool, "rb") as source:
        while True:
            block = await source.read(BODY_BLOCK)
            lines = (held + block).split(b"\n")
            held = lines.pop() if block else b""
            items = [_inline_item(raw) for raw in lines if raw.strip()]
            if items:
                yield separator + b",".join(items)
                separator = b","
            if not block:
                break
    yield b"]}}}}"


def _inline_item(raw: bytes) -> bytes:
    line = _file_line.decode(raw)
    return b'{"request":' + bytes(line.request) + b',"metadata":{"key":' + msgspec.json.encode(line.key) + b"}}"


def _header(response: Response, name: str) -> str | None:
    return next((v for k, v in response.headers.items() if k.lower() == name), None)


def _decode(response: Response, type_: type[T]) -> T:
    return _decode_raw(response.body, type_, f"({response.status})")


def _decode_raw(raw: bytes | msgspec.Raw, type_: type[T], where: str) -> T:
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"unexpected Gemini response {where}: {exc}") from None


def _timestamp(value: str | None) -> float:
    """RFC 3339 (``2026-01-01T00:00:00.123456789Z``, nanoseconds allowed) to Unix seconds."""
    if not value:
        return 0.0
    value = re.sub(r"(\.\d{6})\d+", r"\1", value.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(value).timestamp()


def _result_line(where: str, raw: bytes | msgspec.Raw) -> ResultLine:
    try:
        row = _row_decoder.decode(raw)
        key = row.key if row.key is not None else (row.metadata or {}).get("key")
        if key is None:
            raise ProviderError(f"Gemini results, {where}: a result without a key")
        if row.error is not None:
            error = row.error
            return ResultLine(
                wire_id=key, outcome=Outcome.ERRORED, status_code=grpc_http_status(error.code, error.status),
                body=msgspec.Raw(msgspec.json.encode({"error": error})),
                error_code=error.status or (str(error.code) if error.code is not None else None),
                error_message=error.message,
            )
        if row.response == _NULL:
            return ResultLine(wire_id=key, outcome=Outcome.FAILED, error_code="empty_result")
        summary = _summary_decoder.decode(row.response)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"Gemini results, {where}: {exc}") from None
    return ResultLine(
        wire_id=key, outcome=Outcome.SUCCEEDED, status_code=200, body=row.response,
        usage=summary.usage_metadata.normalise() if summary.usage_metadata else None, model=summary.model_version,
    )
