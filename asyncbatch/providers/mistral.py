"""Mistral Batch API provider (reference: more-providers-gateway-postgres.md, part C).

OpenAI batch lines go to Mistral nearly as they are: the model moves from the body to the job, and the few
OpenAI fields Mistral names differently are renamed (``max_completion_tokens`` -> ``max_tokens``, ``seed`` ->
``random_seed``; embeddings' ``dimensions`` -> ``output_dimension``). Fields that change nothing Mistral does
(``user``, ``store``...) are dropped; fields Mistral cannot carry are refused at submit, naming the field.
Mistral's own ``{"custom_id", "body"}`` lines run as they are (with ``endpoint=`` on the job, and the model in
the body or ``default_model``). The endpoints are those a Mistral job takes (chat, embeddings, FIM,
moderations, OCR, classifications, conversations, transcriptions); bodies of the ones OpenAI has no twin of
are passed through unchanged.

A shard of at most ``inline_max_requests`` requests and ``inline_max_bytes`` bytes is created inline
(``requests`` in the create body, streamed from the spool file); a larger one is uploaded as a
``purpose=batch`` file first. The shard's token travels in the job's ``metadata`` (``asyncbatch_token``) and in
every custom_id (``f"{token[:16]}-{rid}"``): :meth:`MistralProvider.find` lists jobs filtered by that metadata,
newest first, and checks the token on each.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncGenerator, Collection, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp
import anyio
import msgspec

from ..errors import ProviderError, UnsupportedFeatureError, ValidationError
from ..http import Response, RetryPolicy
from ..model import BatchStatus, Outcome, Request, ShardInfo, Usage
from ._http import HttpProvider, listed, spooled_array
from ._tokens import provider_horizon, token_wire_id
from .base import BatchError, RemoteBatch, ResultLine, ShardLimits

__all__ = ["MISTRAL_ENDPOINTS", "MistralProvider"]

MISTRAL_BASE_URL = "https://api.mistral.ai"
API_KEY_ENV = "MISTRAL_API_KEY"
BASE_URL_ENV = "MISTRAL_BASE_URL"
#: The ``endpoint`` values of a batch job (the SDK's APIEndpoint).
MISTRAL_ENDPOINTS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/fim/completions",
    "/v1/moderations",
    "/v1/chat/moderations",
    "/v1/ocr",
    "/v1/classifications",
    "/v1/chat/classifications",
    "/v1/conversations",
    "/v1/audio/transcriptions",
)
CHAT_URL = "/v1/chat/completions"
EMBEDDINGS_URL = "/v1/embeddings"
TOKEN_KEY = "asyncbatch_token"
_MB = 1_000_000
#: The docs disagree (1M requests on one page; 100,000 requests and 512 MB on "Known limitations"): the
#: smaller until verified, and configurable.
DEFAULT_LIMITS = ShardLimits(max_requests=100_000, max_bytes=512 * _MB - 8 * _MB)
#: The SDK sends up to 1,000 requests inline and notes the real limit is the payload's size (not documented).
INLINE_MAX_REQUESTS = 1000
INLINE_MAX_BYTES = 8 * _MB
#: Results stay downloadable 24 h after the job ends ("Known limitations").
RESULTS_RETENTION = 24 * 3600.0
FIND_PAGE = "100"

_STATUSES = {
    "QUEUED": BatchStatus.VALIDATING,
    "RUNNING": BatchStatus.IN_PROGRESS,
    "SUCCESS": BatchStatus.COMPLETED,
    "FAILED": BatchStatus.FAILED,
    "TIMEOUT_EXCEEDED": BatchStatus.EXPIRED,
    "CANCELLATION_REQUESTED": BatchStatus.CANCELLING,
    "CANCELLED": BatchStatus.CANCELLED,
}
_WINDOW = re.compile(r"^(\d+)([hd])$")

# What becomes of OpenAI's chat and embeddings fields on Mistral (ChatCompletionRequest, EmbeddingRequest of
# mistralai 3.7.0): renamed, dropped (they change nothing Mistral does), or carried as they are.
_RENAMED = {
    CHAT_URL: {"max_completion_tokens": "max_tokens", "seed": "random_seed"},
    EMBEDDINGS_URL: {"dimensions": "output_dimension"},
}
_DROPPED = {
    CHAT_URL: frozenset({"model", "user", "safety_identifier", "store", "stream_options", "prompt_cache_retention",
                         "verbosity"}),
    EMBEDDINGS_URL: frozenset({"model", "user"}),
}
_CARRIED = {
    CHAT_URL: frozenset({
        "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata",
        "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction",
        "parallel_tool_calls", "reasoning_effort", "prompt_mode", "safe_prompt", "min_tokens",
        "repetition_penalty", "top_k", "logprobs", "top_logprobs", "prompt_cache_key", "service_tier",
        "guardrails",
    }),
    EMBEDDINGS_URL: frozenset({"input", "output_dimension", "output_dtype", "encoding_format", "metadata"}),
}
#: Accepted only with these values: what OpenAI does by default, which is what Mistral does.
_NEUTRAL = {"logit_bias": ({}, None), "modalities": (["text"], None), "audio": (None,), "functions": (None,),
            "function_call": (None,), "web_search_options": (None,)}

T = TypeVar("T")
_NULL = msgspec.Raw(b"null")


# --- wire structs ----------------------------------------------------------------------------------------


class _File(msgspec.Struct):
    id: str


class _JobError(msgspec.Struct):
    message: str = ""
    count: int = 1


class _Job(msgspec.Struct):
    id: str
    status: str
    created_at: int | None = None
    total_requests: int = 0
    completed_requests: int = 0
    succeeded_requests: int = 0
    failed_requests: int = 0
    output_file: str | None = None
    error_file: str | None = None
    errors: list[_JobError] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] | None = None
    outputs: list[msgspec.Raw] | None = None


class _JobPage(msgspec.Struct):
    data: list[_Job] = msgspec.field(default_factory=list)
    total: int = 0


class _LineResponse(msgspec.Struct, gc=False):
    status_code: int = 200
    body: msgspec.Raw = _NULL


class _OutputLine(msgspec.Struct, gc=False):
    """``{id, custom_id, response: {status_code, body}, error}``: failed if ``error`` or a status >= 400."""

    custom_id: str | None = None
    id: str | None = None
    response: _LineResponse | None = None
    error: msgspec.Raw = _NULL


class _BodyError(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _BodySummary(msgspec.Struct, gc=False):
    model: str | None = None
    usage: _Usage | None = None
    error: _BodyError | str | None = None
    message: str | None = None  # Mistral's own error bodies: {"object": "error", "message": ..., "type": ...}
    type: str | None = None


_line_decoder = msgspec.json.Decoder(_OutputLine)
_summary_decoder = msgspec.json.Decoder(_BodySummary)


# --- provider --------------------------------------------------------------------------------------------


class MistralProvider(HttpProvider):
    """Mistral's Batch API behind the :class:`~asyncbatch.providers.base.Provider` protocol.

    The key comes from ``api_key`` or ``MISTRAL_API_KEY`` only (sent as a Bearer token); a missing key is
    reported at the first network call. The base URL (the host, without ``/v1``) comes from ``base_url``,
    ``MISTRAL_BASE_URL``, else ``https://api.mistral.ai``.
    """

    name = "mistral"
    api_key_env = API_KEY_ENV
    visibility_grace: float = 30.0
    listing_is_whole = True  # list pages hold the same objects as a read, output files included
    #: Seconds the results of an ended job stay downloadable (the engine ingests before they go).
    results_retention: float = RESULTS_RETENTION

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        default_model: str | None = None,
        limits: ShardLimits | None = None,
        inline_max_requests: int = INLINE_MAX_REQUESTS,
        inline_max_bytes: int = INLINE_MAX_BYTES,
        max_connections: int = 32,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
    ) -> None:
        super().__init__(
            base_url=(base_url or os.environ.get(BASE_URL_ENV) or MISTRAL_BASE_URL).rstrip("/"),
            api_key=api_key or os.environ.get(API_KEY_ENV), retry=retry, max_connections=max_connections,
            timeout=timeout,
        )
        self.default_model = default_model
        self.limits = limits or DEFAULT_LIMITS
        self.inline_max_requests = inline_max_requests
        self.inline_max_bytes = inline_max_bytes

    def __repr__(self) -> str:
        return f"MistralProvider(base_url={self.base_url!r})"

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "inline_max_requests": self.inline_max_requests,
            "inline_max_bytes": self.inline_max_bytes,
            "limits": {"max_requests": self.limits.max_requests, "max_bytes": self.limits.max_bytes},
        }
        if self.default_model:
            options["default_model"] = self.default_model
        return options

    # --- validation and encoding (no I/O) ----------------------------------------------------------------

    def check(self, request: Request) -> None:
        if request.method != "POST":
            raise ValidationError(f"method must be POST, not {request.method!r}", field="method")
        if request.url not in MISTRAL_ENDPOINTS:
            raise ValidationError(
                f"Mistral batches do not run {request.url!r} (supported: {', '.join(MISTRAL_ENDPOINTS)})",
                field="url",
            )
        model = request.body.get("model", self.default_model)
        if not isinstance(model, str) or not model:
            raise ValidationError("a Mistral job needs a model: in the body, or default_model=", field="body.model")
        if request.body.get("stream") not in (None, False):
            raise ValidationError("streaming is not available in batches", field="body.stream")
        mistral_body(request.url, request.body)

    def check_job_options(self, completion_window: str, metadata: Mapping[str, str]) -> None:
        """The window becomes ``timeout_hours``; our token pair joins the metadata."""
        timeout_hours(completion_window)
        if TOKEN_KEY in metadata:
            raise ValidationError(f"{TOKEN_KEY!r} is reserved for asyncbatch", field=f"metadata.{TOKEN_KEY}")

    def model_of(self, request: Request) -> str | None:
        model = request.body.get("model", self.default_model)
        return model if isinstance(model, str) else None

    def wire_id(self, custom_id: str, rid: int, token: str) -> str:
        """``f"{token[:16]}-{rid}"``: any custom_id fits, and every line names its shard."""
        return token_wire_id(token, rid)

    def encode_line(self, wire_id: str, url: str, body: bytes) -> bytes:
        """``{"custom_id", "body"}`` with the body as Mistral takes it (the model left to the job)."""
        translated = msgspec.json.encode(mistral_body(url, msgspec.json.decode(body)))
        return b"".join((b'{"custom_id":', msgspec.json.encode(wire_id), b',"body":', translated, b"}"))

    # --- network -----------------------------------------------------------------------------------------

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    def _missing_key(self) -> str:
        return f"no Mistral API key: pass api_key= or set {API_KEY_ENV}"

    def _file_path(self, file_id: str) -> str:
        return f"/v1/files/{file_id}"

    async def upload(self, shard: ShardInfo) -> str | None:
        """Nothing for a small shard (created inline); else a multipart ``purpose=batch`` upload."""
        spool = Path(shard.spool_path)
        size = (await anyio.Path(spool).stat()).st_size
        if shard.request_count <= self.inline_max_requests and size <= self.inline_max_bytes:
            return None
        opened: list[BinaryIO] = []

        def form() -> aiohttp.FormData:
            handle = spool.open("rb")
            opened.append(handle)
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", handle, filename=f"{shard.job_id}-{shard.id}.jsonl",
                           content_type="application/octet-stream")
            return data

        try:
            response = await self._client().request("POST", "/v1/files", form=form)
        finally:
            for handle in opened:
                handle.close()
        return _decode(response, _File).id

    async def create(self, shard: ShardInfo, file_id: str | None = None) -> RemoteBatch:
        """POST ``/v1/batch/jobs`` naming the uploaded file, or with the requests inline (streamed from the
        spool file). Only failures that surely created nothing are retried here; after an ambiguous one the
        engine runs :meth:`find`."""
        model = shard.model or self.default_model
        head = {
            "endpoint": shard.endpoint, "model": model, "metadata": {**shard.metadata, TOKEN_KEY: shard.token},
            "timeout_hours": timeout_hours(shard.completion_window),
        }
        http = self._client()
        if file_id is not None:
            response = await http.request("POST", "/v1/batch/jobs", json={**head, "input_files": [file_id]},
                                          idempotent=False)
        else:
            spool = Path(shard.spool_path)
            opening = msgspec.json.encode(head)[:-1] + b',"requests":['
            response = await http.request("POST", "/v1/batch/jobs", form=lambda: spooled_array(spool, opening, b"]}"),
                                          headers={"content-type": "application/json"}, idempotent=False)
        return self._normalise(_decode(response, _Job))

    async def find(self, shard: ShardInfo, exclude: Collection[str] = ()) -> RemoteBatch | None:
        """The job whose metadata carries this shard's token, newest first.

        The token is also sent as a metadata filter (the SDK's form: a bare query key), so a server that
        honours it answers with that job alone; every job is checked anyway. Paging stops past the shard's
        ``creating`` moment moved onto Mistral's clock (see :func:`._tokens.provider_horizon`): our clock is
        never compared with Mistral's.
        """
        async with contextlib.aclosing(self._pages({TOKEN_KEY: shard.token})) as pages:
            async for jobs, headers in pages:
                for job in jobs:
                    if (job.metadata or {}).get(TOKEN_KEY) == shard.token and job.id not in exclude:
                        return self._normalise(job)
                horizon = provider_horizon(headers, shard.created_at)
                last = jobs[-1].created_at
                if horizon is not None and last is not None and last < horizon:
                    return None
        return None

    async def listing(self) -> AsyncGenerator[list[RemoteBatch], None]:
        """The workspace's jobs, newest first, a page at a time: what the engine's poller reads the statuses
        of many jobs from, one call per page."""
        async with contextlib.aclosing(self._pages({})) as pages:
            async for jobs, _ in pages:
                yield listed(jobs, self._normalise)

    async def _pages(self, filters: Mapping[str, str]) -> AsyncGenerator[tuple[list[_Job], Mapping[str, str]], None]:
        """The pages of the job listing, newest first (none empty): (jobs, the answer's headers)."""
        http = self._client()
        page = 0
        while True:
            params = {"page": str(page), "page_size": FIND_PAGE, "order_by": "-created", **filters}
            response = await http.request("GET", "/v1/batch/jobs", params=params)
            listing = _decode(response, _JobPage)
            if not listing.data:
                return
            yield listing.data, response.headers
            page += 1
            if page * int(FIND_PAGE) >= listing.total:
                return

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("GET", f"/v1/batch/jobs/{batch_id}")
        return self._normalise(_decode(response, _Job))

    async def cancel(self, batch_id: str) -> RemoteBatch:
        response = await self._client().request("POST", f"/v1/batch/jobs/{batch_id}/cancel")
        return self._normalise(_decode(response, _Job))

    async def results(self, batch: RemoteBatch, workdir: Path) -> AsyncGenerator[ResultLine, None]:
        """The output file, then the error file, decoded as they download; a job that has neither (inline)
        gives its ``outputs`` (``?inline=true``). A transfer cut short raises a retryable error."""
        http = self._client()
        files = [f for f in (batch.output_file_id, batch.error_file_id) if f]
        for file_id in files:
            lines = http.lines(f"/v1/files/{file_id}/content", headers={"Accept": "application/octet-stream"})
            async with contextlib.aclosing(lines):
                async for number, line in lines:
                    yield _result_line(f"file {file_id}, line {number}", line)
        if files:
            return
        response = await http.request("GET", f"/v1/batch/jobs/{batch.id}", params={"inline": "true"})
        for index, output in enumerate(_decode(response, _Job).outputs or ()):
            yield _result_line(f"job {batch.id}, output {index}", output)

    def _normalise(self, job: _Job) -> RemoteBatch:
        status = _STATUSES.get(job.status, BatchStatus.FAILED)  # the SDK counts unknown statuses as ended
        errors = [BatchError(code="batch_failed" if status is BatchStatus.FAILED else "job_error",
                             message=error.message) for error in job.errors]
        token = (job.metadata or {}).get(TOKEN_KEY)
        return RemoteBatch(
            id=job.id,
            status=status,
            raw_status=job.status,
            counts={"total": job.total_requests, "completed": job.succeeded_requests,
                    "failed": job.failed_requests},
            output_file_id=job.output_file,
            error_file_id=job.error_file,
            errors=errors,
            created_at=float(job.created_at or 0),
            token=token if isinstance(token, str) else None,
            cancel_requested=status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED),
        )


def timeout_hours(completion_window: str) -> int:
    """A completion window (``24h``, ``2d``) as Mistral's ``timeout_hours``."""
    match = _WINDOW.match(completion_window)
    if match is None:
        raise ValidationError(f"completion_window {completion_window!r} must be hours or days, e.g. '24h' or '2d'",
                              field="completion_window")
    return int(match[1]) * (24 if match[2] == "d" else 1)


def mistral_body(url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat or embeddings body as Mistral takes it (see the module docstring); other endpoints'
    bodies unchanged but for the model, which the job carries."""
    if url not in _CARRIED:
        return {k: v for k, v in body.items() if k != "model"}
    renamed, dropped, carried = _RENAMED[url], _DROPPED[url], _CARRIED[url]
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key in dropped:
            continue
        if key in _NEUTRAL:
            if value not in _NEUTRAL[key]:
                raise UnsupportedFeatureError(f"{key}={value!r} has no Mistral equivalent", field=f"body.{key}")
            continue
        name = renamed.get(key, key)
        if name not in carried:
            raise UnsupportedFeatureError(f"{key!r} cannot be sent to Mistral", field=f"body.{key}")
        if name in out:
            raise ValidationError(f"give either {key!r} or {name!r}, not both", field=f"body.{key}")
        out[name] = value
    return out


def _decode(response: Response, type_: type[T]) -> T:
    try:
        return msgspec.json.decode(response.body, type=type_)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"unexpected Mistral response ({response.status}): {exc}") from None


def _result_line(where: str, raw: bytes | msgspec.Raw) -> ResultLine:
    try:
        line = _line_decoder.decode(raw)
        response = line.response
        summary = _summary_decoder.decode(response.body) if response is not None and response.body != _NULL else None
    except msgspec.DecodeError as exc:
        raise ProviderError(f"Mistral results, {where}: {exc}") from None
    if line.custom_id is None:
        raise ProviderError(f"Mistral results, {where}: a result without a custom_id")
    status = response.status_code if response is not None else None
    if line.error == _NULL and status is not None and status < 400:
        assert response is not None
        usage = summary.usage if summary else None
        return ResultLine(
            wire_id=line.custom_id, outcome=Outcome.SUCCEEDED, status_code=status, body=response.body,
            usage=None if usage is None else Usage(input_tokens=usage.prompt_tokens,
                                                   output_tokens=usage.completion_tokens),
            model=summary.model if summary else None, line_id=line.id,
        )
    message, code = _error_of(line.error, summary)
    if status is None or status < 400:
        return ResultLine(wire_id=line.custom_id, outcome=Outcome.FAILED, error_code=code or "failed",
                          error_message=message, line_id=line.id)
    return ResultLine(
        wire_id=line.custom_id, outcome=Outcome.ERRORED, status_code=status,
        body=response.body if response is not None and response.body != _NULL else None,
        error_code=code, error_message=message, line_id=line.id,
    )


def _error_of(error: msgspec.Raw, summary: _BodySummary | None) -> tuple[str | None, str | None]:
    """(message, code) from a line's ``error`` (a string or an object) or its error body."""
    if error != _NULL:
        decoded = msgspec.json.decode(error)
        if isinstance(decoded, dict):
            code = decoded.get("code") or decoded.get("type")
            return str(decoded.get("message", "")), str(code) if code is not None else None
        return str(decoded), None
    if summary is None:
        return None, None
    detail = summary.error
    if isinstance(detail, _BodyError):
        code = detail.code if detail.code is not None else detail.type
        return detail.message, str(code) if code is not None else None
    return summary.message or (detail if isinstance(detail, str) else None), summary.type
