"""The providers' error envelopes (reference doc section 4), for HTTP errors and for errors inside results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec
from aiohttp import web

from ..wire.openai import openai_error_body
from ..wire.web import json_response
from .ids import random_hex
from .routes import REQUEST_ID

JSON = "application/json"

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class AnthropicErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class AnthropicError(msgspec.Struct, kw_only=True):
    error: AnthropicErrorDetail
    request_id: str | None
    type: Literal["error"] = "error"


def request_id() -> str:
    return "req_" + random_hex(16)


def anthropic_error_type(status: int) -> str:
    if status in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_error_body(status: int, message: str, rid: str | None) -> AnthropicError:
    return AnthropicError(
        error=AnthropicErrorDetail(type=anthropic_error_type(status), message=message), request_id=rid
    )


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return json_response(openai_error_body(status, message, param=param, code=code), status=status,
                         headers=headers)


def anthropic_error(
    request: web.Request, status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response(anthropic_error_body(status, message, request.get(REQUEST_ID)), status=status,
                         headers=headers)


def retry_headers(seconds: float) -> dict[str, str]:
    """``retry-after`` (seconds, as the SDKs parse it, fractions allowed) and ``retry-after-ms``."""
    return {"retry-after": f"{seconds:g}", "retry-after-ms": str(round(seconds * 1000))}


#: HTTP status -> (google.rpc status name, gRPC code), for Gemini's error envelopes and per-request errors.
GRPC_STATUS = {
    400: ("INVALID_ARGUMENT", 3),
    401: ("UNAUTHENTICATED", 16),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    409: ("ABORTED", 10),
    413: ("INVALID_ARGUMENT", 3),
    429: ("RESOURCE_EXHAUSTED", 8),
    499: ("CANCELLED", 1),
    500: ("INTERNAL", 13),
    501: ("UNIMPLEMENTED", 12),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
    529: ("UNAVAILABLE", 14),
}


def gemini_error(
    status: int, message: str, *, status_name: str | None = None, reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Google's error envelope: ``{"error": {"code": <HTTP status>, "message", "status", "details"?}}``; a
    ``reason`` goes in a ``google.rpc.ErrorInfo`` detail."""
    name = status_name or GRPC_STATUS.get(status, ("UNKNOWN", 2))[0]
    error: dict[str, object] = {"code": status, "message": message, "status": name}
    if reason is not None:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                             "domain": "googleapis.com"}]
    return json_response({"error": error}, status=status, headers=headers)


def mistral_error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """Mistral's error body: ``{"object": "error", "message", "type", "param", "code"}``."""
    kind = "invalid_request_error" if status < 500 else "internal_server_error"
    return json_response({"object": "error", "message": message, "type": kind, "param": None, "code": str(status)},
                         status=status, headers=headers)
