"""Retry policy, in one place: what becomes of a request after each failure, and how a failing step waits.

``RetryStrategy`` is a small, replaceable object (pass your own to the manager): the engine asks it to classify
every result line and every batch that ended without results for some of its members. ``StepRetry`` paces a
shard's step (upload, create, poll, download) that keeps failing after the HTTP layer's own retries, and bounds
how long ``run`` keeps at it. The HTTP layer (``asyncbatch.http``) retries one call; nothing else retries.
"""

from __future__ import annotations

import enum
import random
import time

import anyio
import msgspec

from ..errors import ConnectionFailedError, ProviderError, RateLimitedError
from ..model import BatchError, BatchStatus, Outcome, RemoteBatch, RequestState, ResultLine, Settlement


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    PERMANENT = "permanent"


# Batch-level validation codes: our own validation should have caught these, and sending the same lines
# again fails the same way, so they are not retried.
PERMANENT_BATCH_ERRORS = frozenset({
    "invalid_json_line", "duplicate_custom_id", "url_mismatch", "model_mismatch", "empty_file",
    "model_not_found", "invalid_request", "input_modified", "input_no_permissions", "empty_batch",
})
# Batch-level codes that say the account's queue is full, not that the requests are wrong (OpenAI's
# enqueued-token limit): the same requests fit later, or in smaller batches.
CAPACITY_BATCH_ERRORS = frozenset({"token_limit_exceeded"})
# Codes that say the batch was larger than the provider takes (more requests, or bytes, than its limit, which
# may be lower than documented): the same requests fit in smaller batches, at once.
TOO_LARGE_BATCH_ERRORS = frozenset({"too_many_tasks", "file_too_large", "too_large"})


class RetryStrategy(msgspec.Struct, frozen=True, kw_only=True):
    """Retry HTTP 408/409/429/5xx inside results, expired and unreported requests, and batches that failed
    or were cancelled for a transient cause; keep 4xx request errors and user cancellations final."""

    retry_status_codes: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
    permanent_batch_errors: frozenset[str] = PERMANENT_BATCH_ERRORS
    capacity_batch_errors: frozenset[str] = CAPACITY_BATCH_ERRORS
    too_large_batch_errors: frozenset[str] = TOO_LARGE_BATCH_ERRORS

    def over_capacity(self, batch: RemoteBatch) -> bool:
        """The batch failed because the provider's queue for the account was full; nothing in it ran."""
        return batch.status is BatchStatus.FAILED and any(e.code in self.capacity_batch_errors for e in batch.errors)

    def too_large(self, errors: list[BatchError]) -> bool:
        """The provider refused the batch for its size; nothing in it ran, and smaller batches may pass."""
        return any(e.code in self.too_large_batch_errors for e in errors)

    def shrink_codes(self) -> frozenset[str]:
        """Batch error codes after which the job's next batches are planned half as large."""
        return self.capacity_batch_errors | self.too_large_batch_errors

    def classify(self, line: ResultLine) -> Verdict:
        outcome = line.outcome
        if outcome is Outcome.SUCCEEDED:
            return Verdict.SUCCESS
        if outcome is Outcome.ERRORED:
            code = line.status_code
            retryable = code is None or code in self.retry_status_codes or code >= 500
            return Verdict.RETRY if retryable else Verdict.PERMANENT
        return Verdict.RETRY  # expired, cancelled by the provider, failed for a provider-side reason, missing

    def state_after(self, verdict: Verdict, *, attempt: int, max_attempts: int, cancel_requested: bool) -> RequestState:
        """``cancel_requested``: the job was cancelled, or the request's batch was cancelled at the provider."""
        if verdict is Verdict.SUCCESS:
            return RequestState.SUCCEEDED
        if cancel_requested:
            return RequestState.CANCELLED
        if verdict is Verdict.RETRY and attempt < max_attempts:
            return RequestState.PENDING
        return RequestState.FAILED

    def settle_unreported(self, batch: RemoteBatch, *, max_attempts: int, cancel_requested: bool) -> Settlement:
        """What becomes of members that the ended batch reported nothing about.

        A batch cancelled by someone outside asyncbatch (the provider's console, another tool) counts as a
        cancel of its requests: what ran is kept, the rest ends ``cancelled``, never sent again behind the back
        of whoever stopped it. Only a cancel asked through asyncbatch cancels the whole job.
        """
        if cancel_requested:
            return Settlement(state=RequestState.CANCELLED, error_code="cancelled",
                              error_message="cancelled by the user")
        if batch.status is BatchStatus.CANCELLED:
            return Settlement(state=RequestState.CANCELLED, error_code="cancelled_at_provider",
                              error_message=f"batch {batch.id} was cancelled at the provider, outside asyncbatch")
        code, message = _describe(batch)
        if batch.status is BatchStatus.FAILED and any(e.code in self.permanent_batch_errors for e in batch.errors):
            return Settlement(state=RequestState.FAILED, error_code=code, error_message=message)
        return Settlement(state=RequestState.PENDING, error_code=code, error_message=message,
                          max_attempts=max_attempts)

    def settle_gone(self, batch: RemoteBatch) -> Settlement:
        """Members of an ended batch whose results the provider no longer has (they expired before they were
        downloaded). They may well have run and been paid for, so they are not sent again behind the user's
        back: they end failed, and the user decides."""
        return Settlement(state=RequestState.FAILED, error_code="results_expired",
                          error_message=f"the provider no longer has the results of batch {batch.id}: they expired "
                          "before they were downloaded (submit these requests again to rerun them, at a new cost)")

    def settle_rejected(self, errors: list[BatchError]) -> Settlement:
        """Members of a shard the provider refused to take at all (upload or create answered 4xx): failed, or
        back to pending without using up an attempt when only the batch's size was refused."""
        first = errors[0] if errors else BatchError(code="rejected", message="rejected by the provider")
        if self.too_large(errors):
            return Settlement(state=RequestState.PENDING, error_code=first.code, error_message=first.message,
                              refund=True)
        return Settlement(state=RequestState.FAILED, error_code=first.code, error_message=first.message)

    def settle_vanished(self, batch_id: str, *, max_attempts: int, cancel_requested: bool) -> Settlement:
        """Members of a created batch the provider no longer knows (purged, another project or region, the
        provider lost it), once reconciliation by token found no other: sent again while attempts remain."""
        if cancel_requested:
            return Settlement(state=RequestState.CANCELLED, error_code="cancelled",
                              error_message="cancelled by the user")
        return Settlement(state=RequestState.PENDING, error_code="batch_vanished",
                          error_message=f"the provider no longer knows batch {batch_id} (deleted, another project, "
                          "or lost on its side); its requests were sent again while attempts remained",
                          max_attempts=max_attempts)


def _describe(batch: RemoteBatch) -> tuple[str, str]:
    if batch.errors:
        first = batch.errors[0]
        return first.code, first.message or f"batch {batch.status.value}"
    return f"batch_{batch.status.value}", f"the batch ended {batch.status.value} without a result for this request"


#: How long ``run`` goes on trying a provider it could never connect to (nothing listening, no such host: a
#: wrong base URL, most likely), however long ``give_up_after`` is.
UNREACHABLE_GIVE_UP = 120.0


class StepRetry:
    """Paces one shard step that keeps failing after the HTTP layer's retries (the provider unreachable, 5xx).

    Waits grow from ``base`` to ``cap`` seconds, jittered, and are never shorter than a rate limit's
    ``retry_after``. With ``give_up_after`` set (``run``), a streak of failures longer than that (or than
    ``UNREACHABLE_GIVE_UP`` while nothing could be reached) re-raises the last error, so that ``run`` can report
    the shard and finish the rest; without (``serve``), the step is tried for as long as the worker lives. A
    success ends the streak.
    """

    def __init__(self, *, give_up_after: float | None, base: float = 1.0, cap: float = 60.0) -> None:
        self.give_up_after = give_up_after
        self.base = base
        self.cap = cap
        self._attempt = 0
        self._since: float | None = None

    async def wait(self, exc: ProviderError) -> None:
        """Wait before the next try, or raise ``exc`` (not retryable, or the streak went on too long)."""
        if not exc.retryable:
            raise exc
        now = time.monotonic()
        if self._since is None:
            self._since = now
        bound = self.give_up_after
        if bound is not None and isinstance(exc, ConnectionFailedError) and not exc.reached:
            bound = min(bound, UNREACHABLE_GIVE_UP)
        if bound is not None and now - self._since >= bound:
            raise exc
        delay = min(self.base * 2.0**self._attempt, self.cap) * (0.75 + random.random() / 2)
        if isinstance(exc, RateLimitedError) and exc.retry_after:
            delay = max(delay, exc.retry_after)  # as the server asked, when the HTTP layer gave the call up
        self._attempt += 1
        await anyio.sleep(delay)

    def reset(self) -> None:
        self._attempt = 0
        self._since = None
