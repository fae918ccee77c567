"""The OpenAI Files and Batch API objects and its error envelope, field for field (reference doc sections 1, 2
and 4.1): encoded with msgspec, nulls sent as the API sends them."""

from __future__ import annotations

from typing import Any

import msgspec


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(msgspec.Struct, kw_only=True):
    error: OpenAIErrorDetail


def openai_error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> OpenAIError:
    if status == 429:
        etype, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        etype = "server_error"
    else:
        etype = "invalid_request_error"
    return OpenAIError(error=OpenAIErrorDetail(message=message, type=etype, param=param, code=code))


class FileObject(msgspec.Struct, kw_only=True):
    """The OpenAI File object, field for field (reference doc 1.2)."""

    id: str
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    object: str = "file"


class FileDeleted(msgspec.Struct, kw_only=True):
    id: str
    deleted: bool = True
    object: str = "file"


class BatchErrorItem(msgspec.Struct, kw_only=True):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(msgspec.Struct, kw_only=True):
    data: list[BatchErrorItem]
    object: str = "list"


class BatchRequestCounts(msgspec.Struct, kw_only=True):
    total: int
    completed: int
    failed: int


class CachedTokens(msgspec.Struct):
    cached_tokens: int = 0


class ReasoningTokens(msgspec.Struct):
    reasoning_tokens: int = 0


class BatchUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: CachedTokens = msgspec.field(default_factory=CachedTokens)
    output_tokens_details: ReasoningTokens = msgspec.field(default_factory=ReasoningTokens)


class BatchObject(msgspec.Struct, kw_only=True):
    """The Batch object, field for field (reference doc 2.3); nulls are sent, as the API does."""

    id: str
    endpoint: str
    model: str | None
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    usage: BatchUsage | None
    metadata: dict[str, str] | None
    object: str = "batch"


class ListPage(msgspec.Struct, kw_only=True):
    data: list[Any]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: str = "list"


class ExpiresAfter(msgspec.Struct, kw_only=True):
    anchor: Any = None
    seconds: Any = None


class CreateBatchBody(msgspec.Struct, kw_only=True):
    input_file_id: Any = None
    endpoint: Any = None
    completion_window: Any = None
    metadata: Any = None
    output_expires_after: ExpiresAfter | None = None
