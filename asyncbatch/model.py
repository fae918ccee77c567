"""Typed values that cross module boundaries: requests, results, jobs, shards and their status enums.

Everything here is a ``msgspec.Struct`` so that JSON is decoded straight into it; the core never passes
dicts around except for request and response *bodies*, which belong to the provider's schema, not ours.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
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


class Job(msgspec.Struct, kw_only=True, dict=True):
    """One logical submission. ``counts`` is filled by the store when the job is read.

    A job returned by a ``BatchManager`` knows its manager (outside the struct's fields, so it is never
    encoded), which is what lets ``await job.cost()`` work.
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

    async def cost(self) -> CostReport:
        """The cost report of this job (see ``BatchManager.cost``)."""
        manager = self.__dict__.get("_manager")
        if manager is None:
            raise AsyncBatchError("this Job was not read through a BatchManager; use `await manager.cost(job_id)`")
        report: CostReport = await manager.cost(self.id)
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
    """A shard as the store keeps it."""

    id: int
    job_id: str
    attempt: int
    token: str
    phase: ShardPhase
    endpoint: str
    model: str | None
    request_count: int
    bytes: int
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
