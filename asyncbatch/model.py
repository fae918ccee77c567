"""Typed values that cross module boundaries: requests, results, jobs, shards and their status enums.

Everything here is a ``msgspec.Struct`` so that JSON is decoded straight into it; the core never passes
dicts around except for request and response *bodies*, which belong to the provider's schema, not ours.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import AsyncBatchError

if TYPE_CHECKING:
    from .cost import CostReport


class JobStatus(enum.StrEnum):
    """Lifecycle of a job: ``open`` (stored, nothing sent), ``running``, then ``done`` or ``cancelled``."""

    OPEN = "open"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.CANCELLED)


class RequestState(enum.StrEnum):
    """Where one custom_id stands. ``pending`` means "waiting for a shard" (first time or resubmission)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (RequestState.SUCCEEDED, RequestState.FAILED, RequestState.CANCELLED)


class ShardPhase(enum.StrEnum):
    """Local phase of one shard (one attempt at one provider batch); see design.md, invariants 2-4.

    ``abandoned`` is a shard that could not be created for a permanent reason; its members were
    re-queued or failed in the same transaction.
    """

    PLANNED = "planned"
    UPLOADED = "uploaded"
    CREATING = "creating"
    SUBMITTED = "submitted"
    ENDED = "ended"
    INGESTED = "ingested"
    ABANDONED = "abandoned"

    @property
    def is_live(self) -> bool:
        return self not in (ShardPhase.INGESTED, ShardPhase.ABANDONED)


class BatchStatus(enum.StrEnum):
    """Provider batch status, in OpenAI's words; other providers' statuses are mapped onto these."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class Outcome(enum.StrEnum):
    """What happened to one request in one attempt, provider-neutral."""

    SUCCEEDED = "succeeded"
    ERRORED = "errored"  # an HTTP error response inside the batch (response.status_code >= 400)
    FAILED = "failed"  # a non-HTTP error line (error.code), e.g. a provider-side failure
    EXPIRED = "expired"  # not run before the completion window ended
    CANCELLED = "cancelled"  # not run because the batch was cancelled
    MISSING = "missing"  # the batch ended and said nothing about this request


# --- requests --------------------------------------------------------------------------------------------


class Request(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One OpenAI batch input line. Other providers' formats are translated from this one."""

    custom_id: str
    body: dict[str, Any]
    method: str = "POST"
    url: str = "/v1/chat/completions"


class RequestCounts(msgspec.Struct, kw_only=True):
    """Counts with mapping access (``counts["completed"]``, ``counts.get("total")``), as users expect."""

    total: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    pending: int = 0
    cancelled: int = 0

    def __getitem__(self, key: str) -> int:
        if key not in self.__struct_fields__:
            raise KeyError(key)
        value: int = getattr(self, key)
        return value

    def get(self, key: str, default: int | None = None) -> int | None:
        return self[key] if key in self.__struct_fields__ else default

    def keys(self) -> tuple[str, ...]:
        return self.__struct_fields__

    def __iter__(self) -> Iterator[str]:
        return iter(self.__struct_fields__)

    def __len__(self) -> int:
        return len(self.__struct_fields__)

    def as_dict(self) -> dict[str, int]:
        return {k: self[k] for k in self.__struct_fields__}


Mapping.register(RequestCounts)


class Usage(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Token usage of one result, provider-neutral."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Why one request failed: the provider's code (or ours: ``results_expired``, ``cancelled``...) and message."""

    code: str
    message: str


class Result(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The final (or, with ``all_attempts``, one) result of one custom_id.

    ``body`` is the provider's native response body, kept intact; ``text`` is the assistant text when the
    response has one. ``status`` is the request's state (succeeded / failed / cancelled).
    """

    custom_id: str
    status: RequestState
    attempt: int
    outcome: Outcome | None = None
    status_code: int | None = None
    body: Any = None
    error: ErrorInfo | None = None
    usage: Usage | None = None
    model: str | None = None
    batch_id: str | None = None
    request_id: str | None = None
    provider: str = "openai"

    @property
    def ok(self) -> bool:
        return self.status is RequestState.SUCCEEDED

    @property
    def text(self) -> str | None:
        """Assistant text of a chat completion (OpenAI, Mistral), message (Anthropic) or GenerateContentResponse
        (Gemini: its first candidate, thoughts left out) body, else None."""
        body = self.body
        if not isinstance(body, dict):
            return None
        candidates = body.get("candidates")
        if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
            parts = (candidates[0].get("content") or {}).get("parts")
            texts = [p["text"] for p in parts or () if isinstance(p, dict) and isinstance(p.get("text"), str)
                     and not p.get("thought")]
            return "".join(texts) if texts else None
        choices = body.get("choices")
        if isinstance(choices, list) and choices:
            message = choices[0].get("message") if isinstance(choices[0], dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            return content if isinstance(content, str) else None
        content = body.get("content")
        if isinstance(content, list):
            texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
            return "".join(texts) if texts else None
        return None


# --- jobs and shards -------------------------------------------------------------------------------------


class ProviderSpec(msgspec.Struct, kw_only=True, frozen=True):
    """How to rebuild one provider of a job after a restart: its name, base URL and options, and where its key
    is. Never the key itself: ``key_env`` names the environment variable that holds it when it is not the
    provider's usual one (``--api-key-env``), and a gateway resolves keys of its own routes from its config."""

    name: str
    base_url: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    key_env: str | None = None


class Job(msgspec.Struct, kw_only=True, dict=True):
    """One logical submission. ``counts`` is filled by the store when the job is read.

    ``provider``, ``base_url`` and ``provider_options`` describe the job's default provider; ``routes`` maps
    every route name its requests use (the default one included) to the provider that serves it, so one job
    may span providers (a request's model picks its route at submit). ``owner`` is a gateway tenant (None for
    jobs of the library and the CLI); ``idempotency_key`` makes a retried submit return the same job, and
    ``content_hash`` tells a retry with the same requests from one with other requests.

    A job returned by a ``BatchManager`` knows how to price itself (outside the struct's fields, so it is
    never encoded), which is what lets ``await job.cost()`` work.
    """

    id: str
    provider: str
    base_url: str | None
    provider_options: dict[str, Any] = msgspec.field(default_factory=dict)
    endpoint: str
    completion_window: str
    max_attempts: int
    metadata: dict[str, str]
    status: JobStatus
    created_at: float
    updated_at: float
    cancel_requested: bool = False
    counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    routes: dict[str, ProviderSpec] = msgspec.field(default_factory=dict)
    owner: str | None = None
    idempotency_key: str | None = None
    content_hash: str | None = None

    def spec(self, route: str) -> ProviderSpec:
        """The provider of ``route`` (a job stored before routes existed has only its default provider)."""
        found = self.routes.get(route or self.provider)
        if found is not None:
            return found
        if route in ("", self.provider):
            return ProviderSpec(name=self.provider, base_url=self.base_url, options=self.provider_options)
        raise AsyncBatchError(f"job {self.id} has no provider route {route!r}")

    async def cost(self) -> CostReport:
        """The cost report of this job (see ``BatchManager.cost``)."""
        price = self.__dict__.get("_cost")
        if price is None:
            raise AsyncBatchError("this Job was not read through a BatchManager; use `await manager.cost(job_id)`")
        report: CostReport = await price()
        return report


class ShardInfo(msgspec.Struct, kw_only=True):
    """What a provider needs to know about a shard (never the store's internals)."""

    id: int
    job_id: str
    token: str  # client token: travels with the provider batch so a crash between create and record is healed
    endpoint: str
    model: str | None
    request_count: int
    bytes: int
    spool_path: str
    completion_window: str
    metadata: dict[str, str]
    created_at: float  # when the shard entered `creating` (reconciliation searches from here)


class Shard(msgspec.Struct, kw_only=True):
    """A shard as the store keeps it. ``route`` names the provider of the job that runs it (``Job.routes``)."""

    id: int
    job_id: str
    attempt: int
    token: str
    phase: ShardPhase
    endpoint: str
    model: str | None
    request_count: int
    bytes: int
    route: str = ""
    spool_path: str | None = None
    file_id: str | None = None
    batch_id: str | None = None
    batch_status: BatchStatus | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    provider_counts: dict[str, int] = msgspec.field(default_factory=dict)
    errors: list[dict[str, Any]] = msgspec.field(default_factory=list)
    created_at: float = 0.0
    creating_at: float | None = None
    ended_at: float | None = None
    provider_created_at: float | None = None  # the batch's creation time on the provider's clock
    results_expire_at: float | None = None  # when the provider drops the results (provider's clock)
    last_error: str | None = None  # the last failure of a step, shown while the shard waits to try again


# --- provider batches, as every provider reports them ----------------------------------------------------


class ShardLimits(msgspec.Struct, frozen=True, kw_only=True):
    """How much one provider batch may hold. The planner stays below both."""

    max_requests: int
    max_bytes: int


class BatchError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A batch-level error (validation failure, token limit), as OpenAI's ``errors.data[]`` items."""

    code: str
    message: str = ""
    line: int | None = None
    param: str | None = None


class RemoteBatch(msgspec.Struct, kw_only=True):
    """A provider batch, normalised. ``raw_status`` keeps the provider's own word."""

    id: str
    status: BatchStatus
    raw_status: str
    counts: dict[str, int] = msgspec.field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] = msgspec.field(default_factory=list)
    created_at: float = 0.0
    token: str | None = None  # the client token, where the provider echoes it back (metadata)
    cancel_requested: bool = False  # cancelled by someone (us or the user on the console)


class ResultLine(msgspec.Struct, kw_only=True, gc=False):
    """One line of a provider's results, normalised. ``body`` is the native response body as raw JSON.

    ``gc=False`` here and on the other structs made once per request or result: they hold strings, numbers
    and raw bytes, never a reference cycle, and untracked they cost the cyclic garbage collector nothing (it
    walked every one of them at each collection: a fifth of the ingestion's Python time at 50,000 results).
    """

    wire_id: str  # the custom_id as sent to the provider (see Provider.wire_id)
    outcome: Outcome
    status_code: int | None = None
    body: msgspec.Raw | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: Usage | None = None
    request_id: str | None = None
    model: str | None = None
    line_id: str | None = None  # the provider's own id of the line (OpenAI ``batch_req_...``)


# --- rows that cross the store seam ----------------------------------------------------------------------

WireIdFn = Callable[[str, int, str], str]
"""(custom_id, rid, shard token) -> the custom_id the provider sees (``Provider.wire_id``)."""


class NewRequest(msgspec.Struct, kw_only=True, gc=False):
    """A validated request on its way into the store. ``line`` is kept for error messages only."""

    custom_id: str
    route: str
    url: str
    model: str | None
    body: bytes
    size: int
    line: int


class PendingRequest(msgspec.Struct, kw_only=True, gc=False, array_like=True):
    """A request waiting for a shard, as the planner reads it (ordered by route, url, model, rid)."""

    rid: int
    custom_id: str
    route: str
    url: str
    model: str | None
    size: int
    attempts: int


class PlannedShard(msgspec.Struct, kw_only=True):
    """A shard being filled by the planner: one route, endpoint and model, under the provider's limits."""

    route: str
    endpoint: str
    model: str | None
    request_count: int
    bytes: int
    id: int = 0
    attempt: int = 1
    token: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)


class Settlement(msgspec.Struct, kw_only=True, frozen=True):
    """What becomes of the members of a shard that got no result: re-queued (``pending``, while attempts
    remain, else ``failed``), or ended in ``state``, with the reason."""

    state: RequestState
    error_code: str
    error_message: str
    max_attempts: int = 1
    refund: bool = False  # re-queued without using up the attempt (the provider ran nothing, for its own reason)


class ResultRow(msgspec.Struct, kw_only=True, gc=False):
    """One result to upsert, with the request state it leads to.

    The field order is the parameter order of the ``upsert_result`` and ``settle_request`` queries (plus the
    shard id at the end): a row binds as ``(*astuple(row), shard_id)``, with no per-field Python work.
    """

    rid: int
    attempt: int
    outcome: Outcome
    state: RequestState
    status_code: int | None = None
    body: bytes | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    model: str | None = None
    request_id: str | None = None
    line_id: str | None = None


class StoredResult(msgspec.Struct, kw_only=True, gc=False):
    """A request joined with one of its results, as read back from the store."""

    rid: int
    custom_id: str
    state: RequestState
    attempt: int
    request_error_code: str | None
    request_error_message: str | None
    outcome: str | None
    status_code: int | None
    body: bytes | None
    error_code: str | None
    error_message: str | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    model: str | None
    request_id: str | None
    line_id: str | None
    batch_id: str | None
    route: str = ""


class Lease(msgspec.Struct, kw_only=True, frozen=True):
    """The right to change one shard: who holds it, and the fencing token of this grant.

    Every state change of a shard names its lease, and the store applies it only while the token is still the
    shard's: a worker that was paused past its lease and woke up after another took the shard over changes
    nothing, even if it claims the shard again later (a new claim is a new token).
    """

    shard_id: int
    owner: str
    token: int


class JobAudit(msgspec.Struct, kw_only=True):
    """Everything needed to check a job's exactly-once guarantees from outside the engine (tests, ``db check``).

    ``requests`` maps custom_id -> (state, attempts); ``wire_ids`` custom_id -> every id it was sent under;
    ``successes`` custom_id -> the attempts with a stored success; ``tokens`` holds every shard token of the job.
    """

    requests: dict[str, tuple[RequestState, int]]
    wire_ids: dict[str, list[str]]
    successes: dict[str, list[int]]
    tokens: list[str]
    integrity: str


class StoreStats(msgspec.Struct, kw_only=True):
    """Counts over a whole store, for metrics: jobs by status, shards by phase, live provider batches by their
    status, requests by state."""

    jobs: dict[str, int]
    shards: dict[str, int]
    batches: dict[str, int]
    requests: dict[str, int]


# --- the batch gateway's records (asyncbatch.gateway; the store's GatewayStore) ----------------------------


class VirtualKey(msgspec.Struct, kw_only=True):
    """A gateway key as stored: ``token`` is the SHA-256 of the key (never the key), ``owner`` the tenant that
    owns what the key makes (``team:<team_id>``, or ``key:<token>`` for a key without a team)."""

    token: str
    owner: str
    team_id: str | None = None
    models: list[str] = msgspec.field(default_factory=list)  # empty: every model of the config
    max_budget: float | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float = 0.0


class GatewayFile(msgspec.Struct, kw_only=True):
    """A file of the gateway: an upload (``kind="upload"``, content in the store in chunks) or the output or
    error file of a batch (``kind="output"`` / ``"error"``, content made from the batch's results)."""

    id: str
    owner: str
    purpose: str
    filename: str
    created_at: float
    bytes: int = 0
    lines: int = 0
    status: str = "processed"
    batch_id: str | None = None
    kind: str = "upload"


class GatewayBatch(msgspec.Struct, kw_only=True):
    """A client's batch: the job that runs it, or the errors that failed it at validation.

    ``status`` is what the store knows: ``validating`` (being stored), ``submitted`` (its job runs), ``failed``
    (validation), or how it ended (``completed``, ``expired``, ``cancelled``), with the counts and the output
    and error files fixed then. What the client sees in between is read from the job.
    """

    id: str
    owner: str
    key_token: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    job_id: str
    status: str
    created_at: float
    errors: list[BatchError] = msgspec.field(default_factory=list)
    cancelling_at: float | None = None
    ended_at: float | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0


class RoutePrice(msgspec.Struct, kw_only=True, frozen=True):
    """Batch prices of one gateway route (a config ``model_name``), in USD per token."""

    route: str
    input: float
    cached_input: float
    output: float


class GatewayUsage(msgspec.Struct, kw_only=True):
    """Usage and cost booked for the billed results of a batch, or of every batch of a key."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
