"""Which per-request failures are worth another attempt, and what becomes of a request after each one.

A small, replaceable object (pass your own ``RetryStrategy`` to the manager): the engine asks it to
classify every result line and every batch that ended without results for some of its members.
"""

from __future__ import annotations

import enum

import msgspec

from .model import BatchStatus, Outcome, RequestState
from .providers.base import BatchError, RemoteBatch, ResultLine
from .store.base import Settlement


class Verdict(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"
    PERMANENT = "permanent"


# Batch-level validation codes: our own validation should have caught these, and sending the same lines
# again fails the same way, so they are not retried.
PERMANENT_BATCH_ERRORS = frozenset({
    "invalid_json_line", "duplicate_custom_id", "url_mismatch", "model_mismatch", "empty_file", "too_many_tasks",
    "model_not_found", "invalid_request", "input_modified", "input_no_permissions", "empty_batch",
})
# Batch-level codes that say the account's queue is full, not that the requests are wrong (OpenAI's
# enqueued-token limit): the same requests fit later, or in smaller batches.
CAPACITY_BATCH_ERRORS = frozenset({"token_limit_exceeded"})


class RetryStrategy(msgspec.Struct, frozen=True, kw_only=True):
    """Retry HTTP 408/409/429/5xx inside results, expired and unreported requests, and batches that failed
    or were cancelled for a transient cause; keep 4xx request errors and user cancellations final."""

    retry_status_codes: frozenset[int] = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
    permanent_batch_errors: frozenset[str] = PERMANENT_BATCH_ERRORS
    capacity_batch_errors: frozenset[str] = CAPACITY_BATCH_ERRORS

    def over_capacity(self, batch: RemoteBatch) -> bool:
        """The batch failed because the provider's queue for the account was full; nothing in it ran."""
        return batch.status is BatchStatus.FAILED and any(e.code in self.capacity_batch_errors for e in batch.errors)

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
        if verdict is Verdict.SUCCESS:
            return RequestState.SUCCEEDED
        if cancel_requested:
            return RequestState.CANCELLED
        if verdict is Verdict.RETRY and attempt < max_attempts:
            return RequestState.PENDING
        return RequestState.FAILED

    def settle_unreported(self, batch: RemoteBatch, *, max_attempts: int, cancel_requested: bool) -> Settlement:
        """What becomes of members that the ended batch reported nothing about."""
        if cancel_requested:
            return Settlement(state=RequestState.CANCELLED, error_code="cancelled",
                              error_message="cancelled by the user")
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
        """Members of a shard the provider refused to take at all (upload or create answered 4xx)."""
        first = errors[0] if errors else BatchError(code="rejected", message="rejected by the provider")
        return Settlement(state=RequestState.FAILED, error_code=first.code, error_message=first.message)


def _describe(batch: RemoteBatch) -> tuple[str, str]:
    if batch.errors:
        first = batch.errors[0]
        return first.code, first.message or f"batch {batch.status.value}"
    return f"batch_{batch.status.value}", f"the batch ended {batch.status.value} without a result for this request"
