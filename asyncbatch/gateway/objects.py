"""The OpenAI objects the gateway answers with, and its error envelope.

The shapes are ``asyncbatch.wire.openai``'s, OpenAI's field for field, which the emulator answers with too and
the conformance tests check against the official SDK: one definition of OpenAI's wire format in the project.
A client batch's status and counts are read from the job that runs it, and fixed once it ends.
"""

from __future__ import annotations

from typing import Any

from ..model import GatewayBatch, GatewayFile, GatewayUsage, Job, JobStatus
from ..wire.openai import (
    BatchErrorItem,
    BatchErrors,
    BatchObject,
    BatchRequestCounts,
    BatchUsage,
    CachedTokens,
    CreateBatchBody,
    FileDeleted,
    FileObject,
    ListPage,
    openai_error_body,
)
from ..wire.web import json_response

__all__ = [
    "ApiError",
    "CreateBatchBody",
    "FileDeleted",
    "ListPage",
    "batch_object",
    "file_object",
    "json_response",
    "not_found",
]

WINDOW_SECONDS = 86400  # "24h", the one completion window OpenAI offers


class ApiError(Exception):
    """An answer in OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> Any:
        envelope = openai_error_body(self.status, self.message, param=self.param, code=self.code)
        if self.type is not None:
            envelope.error.type = self.type
        return envelope


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    """The 404 of an id this caller does not own: the same words whether it exists for someone else or not."""
    if kind == "file":
        return ApiError(404, f"No such File object: {object_id}", param=param)
    return ApiError(404, f"No batch found with id '{object_id}'.", param=param)


def file_object(file: GatewayFile) -> FileObject:
    return FileObject(id=file.id, bytes=file.bytes, created_at=int(file.created_at), expires_at=None,
                      filename=file.filename, purpose=file.purpose)


def batch_status(batch: GatewayBatch, job: Job | None) -> str:
    """The OpenAI status of a batch: its own once it has ended or failed validation, else its job's."""
    if batch.status in ("failed", "completed", "expired", "cancelled"):
        return batch.status
    if job is None or job.status is JobStatus.OPEN:
        return "validating"
    if job.cancel_requested or job.status is JobStatus.CANCELLED:
        return "cancelling"
    counts = job.counts
    if job.status is JobStatus.DONE or counts.pending + counts.in_flight == 0:
        return "finalizing"  # every request has its final result; the output files are being made
    return "in_progress"


def batch_object(batch: GatewayBatch, job: Job | None, usage: GatewayUsage) -> BatchObject:
    status = batch_status(batch, job)
    if batch.status == "submitted" and job is not None:
        counts = job.counts
        total, completed, failed = counts.total, counts.completed, counts.failed + counts.cancelled
    else:
        total, completed, failed = batch.total, batch.completed, batch.failed
    created = int(batch.created_at)
    ended = int(batch.ended_at) if batch.ended_at is not None else None
    started = created if status not in ("validating", "failed") else None

    def at(*statuses: str) -> int | None:
        return ended if status in statuses else None

    return BatchObject(
        id=batch.id, endpoint=batch.endpoint, model=None,
        errors=BatchErrors(data=[BatchErrorItem(code=e.code, message=e.message, param=e.param, line=e.line)
                                 for e in batch.errors]) if batch.errors else None,
        input_file_id=batch.input_file_id, completion_window=batch.completion_window, status=status,
        output_file_id=batch.output_file_id, error_file_id=batch.error_file_id, created_at=created,
        in_progress_at=started, expires_at=created + WINDOW_SECONDS,
        finalizing_at=at("completed", "expired"), completed_at=at("completed"), failed_at=at("failed"),
        expired_at=at("expired"), cancelling_at=int(batch.cancelling_at) if batch.cancelling_at else None,
        cancelled_at=at("cancelled"),
        request_counts=BatchRequestCounts(total=total, completed=completed, failed=failed),
        usage=BatchUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         total_tokens=usage.input_tokens + usage.output_tokens,
                         input_tokens_details=CachedTokens(cached_tokens=usage.cached_tokens)),
        metadata=batch.metadata,
    )
