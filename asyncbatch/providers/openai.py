"""OpenAI Batch API provider, also for Azure OpenAI and OpenAI-compatible hosts (Groq, Together).

The wire protocol is the reference doc's sections 1, 2 and 4.1: the shard's spool file is uploaded as a
``purpose=batch`` file, a batch is created over it with our client token in ``metadata``, and the output and
error files are streamed back and decoded line by line, as they arrive, into :class:`ResultLine`. Nothing here
holds a whole file in memory: uploads stream from the spool file, downloads are decoded as they stream in.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import msgspec

from ..errors import NotFoundError, ProviderError, ValidationError
from ..http import RetryPolicy
from ..model import BatchStatus, Outcome, Request, ShardInfo, Usage
from ._http import HttpProvider, listed
from ._tokens import provider_horizon
from .base import BatchError, RemoteBatch, ResultLine, ShardLimits

__all__ = [
    "AZURE_ENDPOINTS",
    "HOSTS",
    "OPENAI_ENDPOINTS",
    "TOKEN_KEY",
    "AzureOpenAIProvider",
    "OpenAIProvider",
]

#: The ``endpoint`` enum of ``POST /v1/batches`` (reference §2.1).
OPENAI_ENDPOINTS: tuple[str, ...] = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
#: What Azure Global Batch deployments run; pass ``endpoints=`` to widen it.
AZURE_ENDPOINTS: tuple[str, ...] = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
#: Endpoints whose body must name a model (moderations, images and videos fall back to a default one).
MODEL_REQUIRED = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
)

#: The field without which a request to an endpoint cannot run (the rest is checked by the provider when it
#: runs); chat's ``messages`` is checked apart (a non-empty list of objects).
REQUIRED_INPUT = {
    "/v1/embeddings": "input",
    "/v1/moderations": "input",
    "/v1/completions": "prompt",
}
CHAT_URL = "/v1/chat/completions"

OPENAI_BASE_URL = "https://api.openai.com/v1"


class HostEnv(NamedTuple):
    """Where a host's key and base URL come from when they are not passed."""

    key: str | None  # the variable of the API key
    base_url: str | None  # the variable of the base URL
    default_url: str | None  # the public API


#: The hosts this class knows by ``name``. Each reads its own variables and no other: Groq never gets
#: ``OPENAI_API_KEY`` (nor ``OPENAI_BASE_URL``), and a host of another name gets no key from the environment.
#: The base-URL variables are the ones the vendors' own SDKs read (``GROQ_BASE_URL``, ``TOGETHER_BASE_URL``).
HOSTS: dict[str, HostEnv] = {
    "openai": HostEnv("OPENAI_API_KEY", "OPENAI_BASE_URL", OPENAI_BASE_URL),
    "groq": HostEnv("GROQ_API_KEY", "GROQ_BASE_URL", "https://api.groq.com/openai/v1"),
    "together": HostEnv("TOGETHER_API_KEY", "TOGETHER_BASE_URL", "https://api.together.xyz/v1"),
}
_NO_ENV = HostEnv(None, None, None)
#: The metadata key that carries the shard's client token, so that a lost create can be found again.
TOKEN_KEY = "asyncbatch_token"
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
LIST_PAGE = "100"  # the most GET /batches returns at once
_MB = 1024 * 1024
#: Planner headroom under the 200 MB input cap: the provider's own byte count may differ a little from ours.
BYTES_MARGIN = 2 * _MB


# --- wire structs ----------------------------------------------------------------------------------------


class _FileObject(msgspec.Struct):
    id: str


class _ErrorList(msgspec.Struct):
    data: list[BatchError] = msgspec.field(default_factory=list)


class _RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class _Batch(msgspec.Struct):
    """A batch object. Timestamps are Unix seconds, or ISO strings on Together and older Azure versions;
    ``errors`` is ``{data: [...]}`` on OpenAI and a bare array on Groq."""

    id: str
    status: str
    created_at: float | str | None = None
    request_counts: _RequestCounts | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: _ErrorList | list[BatchError] | None = None
    metadata: dict[str, str] | None = None
    cancelling_at: float | str | None = None


class _CreateEnvelope(msgspec.Struct):
    """Together wraps the created batch as ``{job, warning}``; OpenAI returns it bare."""

    job: _Batch | None = None


class _Paging(msgspec.Struct):
    next_cursor: str | None = None


class _BatchPage(msgspec.Struct):
    """A page of ``GET /batches``: OpenAI pages by ``has_more``/``after``, Groq by ``paging.next_cursor``."""

    data: list[_Batch]
    has_more: bool = False
    paging: _Paging | None = None


class _CreateBatch(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]


class _TokenDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _BodyUsage(msgspec.Struct, gc=False):
    """Chat/completions/embeddings say ``prompt_tokens``; the Responses API says ``input_tokens``."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _TokenDetails | None = None
    input_tokens_details: _TokenDetails | None = None

    def normalise(self) -> Usage:
        details = self.prompt_tokens_details or self.input_tokens_details
        prompt, completion = self.prompt_tokens, self.completion_tokens  # once per result line: no generators
        return Usage(
            input_tokens=prompt if prompt is not None else self.input_tokens or 0,
            output_tokens=completion if completion is not None else self.output_tokens or 0,
            cached_input_tokens=(details.cached_tokens or 0) if details else 0,
        )


class _BodyError(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _BodySummary(msgspec.Struct, gc=False):
    """The few fields of a response body we index; the body itself stays raw."""

    model: str | None = None
    usage: _BodyUsage | None = None
    error: _BodyError | None = None


class _LineResponse(msgspec.Struct, gc=False):
    status_code: int
    request_id: str | None = None
    body: msgspec.Raw = msgspec.Raw(b"null")


class _LineError(msgspec.Struct, gc=False):
    code: str | None = None
    message: str | None = None


class _OutputLine(msgspec.Struct, gc=False):
    """One line of an output or error file: ``{id, custom_id, response, error}`` (reference §2.6)."""

    custom_id: str
    id: str | None = None
    response: _LineResponse | None = None
    error: _LineError | None = None


_output_line = msgspec.json.Decoder(_OutputLine)
_body_summary = msgspec.json.Decoder(_BodySummary)
_LINE_OUTCOMES = {"batch_expired": Outcome.EXPIRED, "batch_cancelled": Outcome.CANCELLED}


def _epoch(value: float | str | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).timestamp()
    return float(value)


# --- provider --------------------------------------------------------------------------------------------


class OpenAIProvider(HttpProvider):
    """The OpenAI Batch API (``/files`` + ``/batches``), or any host that speaks it.

    OpenAI-compatible hosts are reached by pointing ``base_url`` at them and stating what they allow; pass
    ``name`` so that jobs record the host:

    * Groq: ``OpenAIProvider(name="groq", base_url="https://api.groq.com/openai/v1",
      api_key=os.environ["GROQ_API_KEY"], completion_windows=("24h", "48h", "72h", "7d"),
      endpoints=("/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"))``.
      Its cursor paging and bare ``errors`` array are understood.
    * Together: ``OpenAIProvider(name="together", base_url="https://api.together.xyz/v1",
      api_key=os.environ["TOGETHER_API_KEY"], file_purpose="batch-api",
      endpoints=("/v1/chat/completions", "/v1/completions"), limits=ShardLimits(max_requests=50_000,
      max_bytes=98 * 1024 * 1024))``. Its ``{job: ...}`` create envelope, upper-case statuses and ISO
      timestamps are understood, but it keeps no batch metadata, so :meth:`find` cannot recognise a batch
      whose create reply was lost there (the engine then creates a new one).

    The API key comes from ``api_key`` or the host's own variable (``OPENAI_API_KEY``, ``GROQ_API_KEY``,
    ``TOGETHER_API_KEY``: see :data:`HOSTS`), the base URL from ``base_url``, the host's variable, else its
    public API. A host of any other ``name`` needs both passed. A missing key is reported at the first network
    call, so a provider can be built (e.g. to show a job's status) without one. The key lives only in the
    HTTP client's headers and redaction list, never in ``repr``.
    """

    name: str = "openai"
    default_limits = ShardLimits(max_requests=50_000, max_bytes=200 * _MB - BYTES_MARGIN)
    #: OpenAI does not document eventual consistency; a short grace costs little where it is not needed.
    visibility_grace: float = 30.0
    listing_is_whole = True  # list pages hold the same objects as a read, output files included
    #: Seconds output and error files stay downloadable (30 days by default).
    results_retention: float = 30 * 86400.0

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        limits: ShardLimits | None = None,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        completion_windows: Collection[str] = ("24h",),
        endpoints: Collection[str] = OPENAI_ENDPOINTS,
        name: str | None = None,
        file_purpose: str = "batch",
    ) -> None:
        self.name = name or type(self).name
        env = self._environment()
        base_url = base_url or (os.environ.get(env.base_url) if env.base_url else None) or env.default_url
        if not base_url:
            raise ValidationError(f"pass base_url= for the host {self.name!r}", field="base_url")
        self.api_key_env = env.key or ""
        super().__init__(
            base_url=base_url.rstrip("/"), api_key=api_key or (os.environ.get(env.key) if env.key else None),
            retry=retry, max_connections=max_connections, timeout=timeout,
        )
        self.limits = limits or self.default_limits
        self.completion_windows = frozenset(completion_windows)
        self.endpoints = frozenset(endpoints)
        self.file_purpose = file_purpose
        self.organization = organization
        self.project = project
        self._optional_headers = {
            k: v for k, v in (("OpenAI-Organization", organization), ("OpenAI-Project", project)) if v
        }
        self._query = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r})"

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "completion_windows": sorted(self.completion_windows),
            "endpoints": sorted(self.endpoints),
            "limits": {"max_requests": self.limits.max_requests, "max_bytes": self.limits.max_bytes},
        }
        if self.file_purpose != "batch":
            options["file_purpose"] = self.file_purpose
        options.update((k, v) for k, v in (("organization", self.organization), ("project", self.project)) if v)
        return options

    # --- validation (no I/O) -----------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        if request.method != "POST":
            raise ValidationError(f"method must be POST, not {request.method!r}", field="method")
        if request.url not in self.endpoints:
            supported = ", ".join(sorted(self.endpoints))
            raise ValidationError(
                f"{self.name} batches do not run {request.url!r} (supported: {supported})", field="url"
            )
        body = request.body
        model = body.get("model")
        if model is None and request.url in MODEL_REQUIRED:
            raise ValidationError(f"{request.url} needs a model", field="body.model")
        if model is not None and not isinstance(model, str):
            raise ValidationError("model must be a string", field="body.model")
        if body.get("stream") not in (None, False):
            raise ValidationError("streaming is not available in batches", field="body.stream")
        if request.url == CHAT_URL:
            messages = body.get("messages")
            if not (messages and isinstance(messages, list) and all(map(isinstance, messages, repeat(dict)))):
                raise ValidationError("messages must be a non-empty list of message objects", field="body.messages")
        elif (required := REQUIRED_INPUT.get(request.url)) is not None and _empty(body.get(required)):
            raise ValidationError(f"{request.url} needs a non-empty {required!r}", field=f"body.{required}")

    def check_job_options(self, completion_window: str, metadata: Mapping[str, str]) -> None:
        """Validate job options before anything is stored; the token pair we add counts against the 16."""
        if completion_window not in self.completion_windows:
            allowed = ", ".join(sorted(self.completion_windows))
            raise ValidationError(
                f"completion_window {completion_window!r} is not allowed by {self.name} (allowed: {allowed})",
                field="completion_window",
            )
        if TOKEN_KEY in metadata:
            raise ValidationError(f"{TOKEN_KEY!r} is reserved for asyncbatch", field=f"metadata.{TOKEN_KEY}")
        if len(metadata) + 1 > MAX_METADATA_PAIRS:
            raise ValidationError(
                f"at most {MAX_METADATA_PAIRS - 1} metadata pairs (asyncbatch adds one), got {len(metadata)}",
                field="metadata",
            )
        for key, value in metadata.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY:
                raise ValidationError(f"keys must be 1-{MAX_METADATA_KEY} characters", field="metadata")
            if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
                raise ValidationError(
                    f"values must be strings of at most {MAX_METADATA_VALUE} characters",
                    field=f"metadata.{key}",
                )

    def model_of(self, request: Request) -> str | None:
        model = request.body.get("model")
        return model if isinstance(model, str) else None

    def wire_id(self, custom_id: str, rid: int, token: str) -> str:
        """OpenAI accepts any custom_id string, so the user's id goes over the wire unchanged."""
        return custom_id

    def encode_line(self, wire_id: str, url: str, body: bytes) -> bytes:
        """Splice the stored (compact) body JSON in as is: no decode/encode on the per-request hot path."""
        return b"".join(
            (
                b'{"custom_id":',
                msgspec.json.encode(wire_id),
                b',"method":"POST","url":',
                msgspec.json.encode(url),
                b',"body":',
                body,
                b"}",
            )
        )

    # --- network -----------------------------------------------------------------------------------------

    def _environment(self) -> HostEnv:
        return HOSTS.get(self.name, _NO_ENV)

    def _missing_key(self) -> str:
        if not self.api_key_env:
            return f"no API key for {self.name}: pass api_key="
        return f"no API key for {self.name}: pass api_key= or set {self.api_key_env}"

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}", **self._optional_headers}

    def _path(self, path: str) -> str:
        return path + self._query

    def _wire_endpoint(self, endpoint: str) -> str:
        return endpoint

    async def upload(self, shard: ShardInfo) -> str:
        """Multipart upload streamed from the spool file; each try opens the file afresh."""
        spool = Path(shard.spool_path)
        filename = f"{shard.job_id}-{shard.id}.jsonl"
        opened: list[BinaryIO] = []

        def form() -> aiohttp.FormData:
            handle = spool.open("rb")
            opened.append(handle)
            data = aiohttp.FormData()
            data.add_field("purpose", self.file_purpose)
            data.add_field("file", handle, filename=filename, content_type="application/octet-stream")
            return data

        try:
            response = await self._client().request("POST", self._path("/files"), form=form)
        except NotFoundError as exc:
            if not urlsplit(self.base_url).path.rstrip("/").endswith("/v1"):  # the first call a job makes
                exc.add_note(f"the base URL {self.base_url} has no /v1: OpenAI-compatible APIs usually live under "
                             f"it (try {self.base_url.rstrip('/')}/v1, e.g. `asyncbatch run --base-url ...`)")
            raise
        finally:
            for handle in opened:
                handle.close()
        return msgspec.json.decode(response.body, type=_FileObject).id

    def _file_path(self, file_id: str) -> str:
        return self._path(f"/files/{file_id}")

    async def create(self, shard: ShardInfo, file_id: str | None) -> RemoteBatch:
        """Create the batch over the uploaded file, with the shard's token in its metadata.

        OpenAI has no idempotency key, so only failures that surely created nothing are retried here
        (``idempotent=False``: connection refused, 429). After an ambiguous one (a dropped connection, a 5xx)
        the batch may exist: the error goes up, and the engine looks for it by token (:meth:`find`) before
        any new create.
        """
        if file_id is None:
            raise ValueError(f"{self.name} batches are created from an uploaded file")
        body = _CreateBatch(
            input_file_id=file_id,
            endpoint=self._wire_endpoint(shard.endpoint),
            completion_window=shard.completion_window,
            metadata={**shard.metadata, TOKEN_KEY: shard.token},
        )
        response = await self._client().request("POST", self._path("/batches"), json=body, idempotent=False)
        envelope = msgspec.json.decode(response.body, type=_CreateEnvelope)
        return self._normalise(envelope.job or msgspec.json.decode(response.body, type=_Batch))

    async def find(self, shard: ShardInfo, exclude: Collection[str] = ()) -> RemoteBatch | None:
        """The batch whose metadata carries the shard's token, searching newest first.

        Paging stops at the first page reaching back past the shard's ``creating`` moment moved onto the
        provider's clock (its ``Date`` header less the time elapsed on ours, see ``provider_horizon``): a batch
        for this token cannot be older, so an account's history is never scanned, and our clock is never
        compared with the provider's.
        """
        async with contextlib.aclosing(self._pages()) as pages:
            async for items, headers in pages:
                for item in items:
                    if item.metadata and item.metadata.get(TOKEN_KEY) == shard.token and item.id not in exclude:
                        return self._normalise(item)
                horizon = provider_horizon(headers, shard.created_at)
                if horizon is not None and _epoch(items[-1].created_at) < horizon:
                    return None
        return None

    async def listing(self) -> AsyncGenerator[list[RemoteBatch], None]:
        """The account's batches, newest first, a page at a time: what the engine's poller reads the statuses
        of many batches from, one call per page."""
        async with contextlib.aclosing(self._pages()) as pages:
            async for items, _ in pages:
                yield listed(items, self._normalise)

    async def _pages(self) -> AsyncGenerator[tuple[list[_Batch], Mapping[str, str]], None]:
        """The pages of ``GET /batches``, newest first (none empty): (batches, the answer's headers)."""
        http = self._client()
        params = {"limit": LIST_PAGE}
        while True:
            response = await http.request("GET", self._path("/batches"), params=params)
            page = msgspec.json.decode(response.body, type=_BatchPage | list[_Batch])
            items, cursor = (page, None) if isinstance(page, list) else (page.data, _next_page(page))
            if not items:
                return
            yield items, response.headers
            if cursor is None:
                return
            params = {"limit": LIST_PAGE, **cursor}

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("GET", self._path(f"/batches/{batch_id}"))
        return self._normalise(msgspec.json.decode(response.body, type=_Batch))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("POST", self._path(f"/batches/{batch_id}/cancel"))
        return self._normalise(msgspec.json.decode(response.body, type=_Batch))

    async def results(self, batch: RemoteBatch, workdir: Path) -> AsyncGenerator[ResultLine, None]:
        """The lines of the output file, then of the error file, decoded as they are downloaded (nothing is
        written to ``workdir``). A transfer cut short raises a retryable error: the engine starts over, and
        ingesting a line twice is harmless."""
        http = self._client()
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                blocks = http.blocks(self._path(f"/files/{file_id}/content"), headers={"Accept": "application/binary"})
                async with contextlib.aclosing(blocks):
                    async for first, block in blocks:
                        for line in self._result_lines(file_id, first, block):
                            yield line

    # --- normalisation -----------------------------------------------------------------------------------

    def _normalise(self, batch: _Batch) -> RemoteBatch:
        try:
            status = BatchStatus(batch.status.lower())
        except ValueError:
            raise ProviderError(f"{self.name} batch {batch.id} has unknown status {batch.status!r}") from None
        errors = batch.errors.data if isinstance(batch.errors, _ErrorList) else batch.errors or []
        counts = batch.request_counts
        return RemoteBatch(
            id=batch.id,
            status=status,
            raw_status=batch.status,
            counts=msgspec.structs.asdict(counts) if counts else {},
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            errors=errors,
            created_at=_epoch(batch.created_at),
            token=(batch.metadata or {}).get(TOKEN_KEY),
            cancel_requested=batch.cancelling_at is not None
            or status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED),
        )

    def _result_lines(self, file_id: str, first: int, block: bytes) -> list[ResultLine]:
        """The lines of a block of a result file, decoded in two calls: the lines (bodies kept raw), then the
        indexed fields of their bodies. A block that does not decode so is decoded line by line, which names the
        line at fault."""
        try:
            lines = _output_line.decode_lines(block)
        except msgspec.DecodeError:
            return [self._result_line(file_id, number, raw)
                    for number, raw in enumerate(block.split(b"\n"), first) if raw.strip()]
        summaries = iter(_summaries([line.response.body for line in lines if line.response is not None]))
        return [self._normalised_line(line, next(summaries) if line.response is not None else None) for line in lines]

    def _result_line(self, file_id: str, number: int, raw: bytes) -> ResultLine:
        try:
            line = _output_line.decode(raw)
        except msgspec.DecodeError as exc:
            raise ProviderError(f"{self.name} result file {file_id}, line {number}: {exc}") from None
        return self._normalised_line(line, _summarise(line.response.body) if line.response is not None else None)

    @staticmethod
    def _normalised_line(line: _OutputLine, summary: _BodySummary | None) -> ResultLine:
        response = line.response
        if response is None:
            code = line.error.code if line.error else None
            return ResultLine(
                wire_id=line.custom_id,
                outcome=_LINE_OUTCOMES.get(code or "", Outcome.FAILED),
                error_code=code,
                error_message=line.error.message if line.error else None,
                line_id=line.id,
            )
        error = summary.error if summary and response.status_code >= 400 else None
        return ResultLine(
            wire_id=line.custom_id,
            outcome=Outcome.SUCCEEDED if response.status_code < 400 else Outcome.ERRORED,
            status_code=response.status_code,
            body=response.body,
            error_code=_error_code(error),
            error_message=error.message if error else None,
            usage=summary.usage.normalise() if summary and summary.usage else None,
            request_id=response.request_id,
            model=summary.model if summary else None,
            line_id=line.id,
        )


def _empty(value: Any) -> bool:
    """Missing, null, or an empty string, list or object: nothing for the endpoint to work on."""
    return value is None or (isinstance(value, str | list | dict) and not value)


def _next_page(page: _BatchPage) -> dict[str, str] | None:
    if page.paging is not None:
        return {"cursor": page.paging.next_cursor} if page.paging.next_cursor else None
    return {"after": page.data[-1].id} if page.has_more and page.data else None


def _summaries(bodies: list[msgspec.Raw]) -> Sequence[_BodySummary | None]:
    """``_summarise`` of many bodies in one call (a JSON body holds no raw newline, so they make JSON lines);
    one at a time where one of them is of another shape."""
    try:
        found = _body_summary.decode_lines(b"\n".join(bodies))
    except msgspec.DecodeError:
        return [_summarise(body) for body in bodies]
    return found if len(found) == len(bodies) else [_summarise(body) for body in bodies]


def _summarise(body: msgspec.Raw) -> _BodySummary | None:
    """The indexed fields of a body; a body of another shape (a bare string from a proxy) is only kept raw."""
    try:
        return _body_summary.decode(body)
    except msgspec.DecodeError:
        return None


def _error_code(error: _BodyError | None) -> str | None:
    if error is None:
        return None
    code = error.code if error.code is not None else error.type
    return str(code) if code is not None else None


class AzureOpenAIProvider(OpenAIProvider):
    """Azure OpenAI batches: the OpenAI protocol with Azure's URLs, ``api-key`` auth and limits.

    ``base_url`` (or ``AZURE_OPENAI_ENDPOINT``) is the resource endpoint,
    ``https://{resource}.openai.azure.com``; ``/openai/v1`` is appended when it has no path (a URL with a
    path is used as given). With ``api_version`` the older ``/openai/...?api-version=`` routes are used
    instead. The deployment is chosen by the ``model`` of each line, which must name a Global-Batch
    deployment. The key comes from ``api_key`` or ``AZURE_OPENAI_API_KEY`` and is sent as ``api-key``.
    """

    name = "azure"
    default_limits = ShardLimits(max_requests=100_000, max_bytes=200 * _MB - BYTES_MARGIN)

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        api_version: str | None = None,
        limits: ShardLimits | None = None,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        completion_windows: Collection[str] = ("24h",),
        endpoints: Collection[str] = AZURE_ENDPOINTS,
        name: str | None = None,
    ) -> None:
        endpoint = base_url or os.environ.get("AZURE_OPENAI_ENDPOINT")
        if not endpoint:
            raise ValidationError("pass base_url= or set AZURE_OPENAI_ENDPOINT", field="base_url")
        super().__init__(
            api_key=api_key,
            base_url=_azure_base_url(endpoint, api_version),
            limits=limits,
            max_connections=max_connections,
            retry=retry,
            timeout=timeout,
            completion_windows=completion_windows,
            endpoints=endpoints,
            name=name,
        )
        self._query = f"?api-version={api_version}" if api_version else ""
        self.api_version = api_version

    def options(self) -> dict[str, Any]:
        options = super().options()
        if self.api_version:
            options["api_version"] = self.api_version
        return options

    def _environment(self) -> HostEnv:
        """Azure's key variable whatever ``name`` says; the base URL was settled from ``AZURE_OPENAI_ENDPOINT``."""
        return HostEnv("AZURE_OPENAI_API_KEY", None, None)

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"api-key": api_key}

    def _wire_endpoint(self, endpoint: str) -> str:
        """Azure names the batch endpoint without ``/v1`` (``/chat/completions``), reference §5.1."""
        return endpoint.removeprefix("/v1")


def _azure_base_url(endpoint: str, api_version: str | None) -> str:
    endpoint = endpoint.rstrip("/")
    path = urlsplit(endpoint).path
    if api_version:
        return endpoint + "/openai" if not path else endpoint
    if not path:
        return endpoint + "/openai/v1"
    return endpoint + "/v1" if path == "/openai" else endpoint
