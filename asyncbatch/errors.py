"""The one exception tree of asyncbatch::

    AsyncBatchError
    ├── ValidationError             bad input or options; nothing was stored or uploaded
    │   ├── JSONLError              a line is not JSON, not UTF-8, or not the expected shape
    │   ├── DuplicateCustomIdError  the same custom_id twice in one job
    │   ├── UnsupportedFeatureError the request uses what its provider cannot express
    │   └── UnknownProviderError    no provider of that name (also a ValueError)
    ├── JobConflictError            a submit retried with the same idempotency key but other requests
    ├── ProviderError               the provider answered with an error, or could not be reached
    │   ├── AuthenticationError     401/403
    │   ├── NotFoundError           404
    │   ├── BadRequestError         400/409/413/422
    │   └── TransientError          408/409/429/5xx, dropped connections, timeouts
    │       ├── RateLimitedError    429, with the server's retry_after
    │       └── ConnectionFailedError
    ├── StoreError                  the job store cannot be used (locked, read-only, full, corrupt, gone)
    │   ├── SchemaVersionError      written by a newer asyncbatch: left untouched
    │   ├── LeaseLostError          another worker holds the shard now; this one stops touching it
    │   ├── PlanningConflictError   a planning cut off by a lost connection found its requests taken: plan again
    │   └── BatchClaimedError       the provider batch is recorded for another shard already
    └── JobNotFoundError            no job with that id (also a KeyError)

Callers catch at the level they care about. Messages never contain secrets: the HTTP layer redacts them before
an exception is built, and URLs with credentials are refused before they are stored.
"""

from __future__ import annotations


class AsyncBatchError(Exception):
    """Base class of every error raised by asyncbatch."""


# --- input -----------------------------------------------------------------------------------------------


class ValidationError(AsyncBatchError):
    """A request (or a whole input) is invalid; nothing was stored or uploaded.

    ``line`` is the 1-based line of the input file (or index in an iterable), ``custom_id`` and ``field``
    name the offending request and field where they are known.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        custom_id: str | None = None,
        field: str | None = None,
    ) -> None:
        self.reason = message
        self.line = line
        self.custom_id = custom_id
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.custom_id is not None:
            where.append(f"custom_id {self.custom_id!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


class JSONLError(ValidationError):
    """A line of a JSONL input is not valid JSON, not UTF-8, or not the expected shape."""


class DuplicateCustomIdError(ValidationError):
    """The same custom_id appears twice in one job."""


class UnsupportedFeatureError(ValidationError):
    """The request uses a feature the target provider cannot express (e.g. for a translated request)."""


class UnknownProviderError(ValidationError, ValueError):
    """No provider of that name (a ``ValueError`` too, which ``create_provider`` raised before)."""


class JobConflictError(AsyncBatchError):
    """A submit was retried with an idempotency key (or job id) that names a job with other requests."""


# --- provider --------------------------------------------------------------------------------------------


class ProviderError(AsyncBatchError):
    """The provider answered with an error, or could not be reached.

    ``status`` is the HTTP status (None for connection errors), ``code``/``type`` come from the provider's
    error envelope, ``request_id`` from its response headers. ``retryable`` tells whether the same call may
    succeed later.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.request_id = request_id
        prefix = f"HTTP {status}: " if status is not None else ""
        super().__init__(prefix + message)


class AuthenticationError(ProviderError):
    """401/403: the key is missing, wrong, or not allowed."""


class NotFoundError(ProviderError):
    """404: the batch or file does not exist (or is not visible yet)."""


class BadRequestError(ProviderError):
    """400/409/413/422: the provider rejected the call itself."""


class TransientError(ProviderError):
    """A failure that may go away by itself: 408/409/429/5xx, dropped connections, timeouts."""

    retryable = True


class RateLimitedError(TransientError):
    """429: too many requests; ``retry_after`` holds the server's hint in seconds when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ConnectionFailedError(TransientError):
    """The connection failed, was dropped, or timed out before a full response arrived. ``reached`` is False
    when no connection could be made at all (nothing listening, no such host): likely a wrong base URL."""

    def __init__(self, message: str, *, reached: bool = True, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.reached = reached


class QuotaExceededError(ProviderError):
    """429 with OpenAI's ``insufficient_quota``: the account is out of credit or over its spending limit.

    Not transient, though it shares the status of a rate limit: waiting changes nothing, the account's billing
    must. So it is never retried, and ``retryable`` is False.
    """


class WebhookError(ProviderError):
    """A webhook receiver refused a delivery, or kept failing it through the retries. The message names the
    event, the receiver's answer and its URL redacted (scheme, host and port); ``status`` is the answer's."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        # the message already holds the receiver's answer: no "HTTP nnn:" prefix
        super().__init__(message, code=code, type=type, request_id=request_id)
        self.status = status


# --- store -----------------------------------------------------------------------------------------------


class StoreError(AsyncBatchError):
    """The local job store cannot be used (locked, read-only, full disk, corrupt)."""


class SchemaVersionError(StoreError):
    """The database was written by a newer asyncbatch; refusing to touch it."""


class LeaseLostError(StoreError):
    """Another worker holds the shard now (or it moved on); this worker must stop touching it."""


class PlanningConflictError(StoreError):
    """A planning session was cut off (a lost connection) and, replayed, found that another worker had taken its
    requests meanwhile: nothing of it was stored, and planning again is safe (the engine does)."""


class BatchClaimedError(StoreError):
    """The provider batch is already recorded for another shard (found by two reconciliations at once)."""


class JobNotFoundError(AsyncBatchError, KeyError):
    """No job with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"
