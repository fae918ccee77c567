"""How an API module describes its endpoints to the server: path, handler, provider and fault group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _request_key(name: str, kind: type[Any]) -> Any:
    """A key of the request's own mapping: ``web.RequestKey`` where aiohttp has it (3.14+, which warns about
    plain string keys), else a string. The emulator ships with the library and runs on the oldest aiohttp the
    project supports."""
    make = getattr(web, "RequestKey", None)
    return make(name, kind) if make is not None else f"asyncbatch.{name}"


REQUEST_ID = _request_key("request_id", str)
RESPONSE_HEADERS = _request_key("response_headers", dict)
TRUNCATE = _request_key("truncate", bool)  # a truncate fault was drawn for this download


class RouteSpec(msgspec.Struct, frozen=True):
    """``provider`` picks the auth scheme and error envelope; ``group`` the FaultSpec that applies.

    ``creates`` marks the calls after which ``drop_after_create_rate`` may drop the connection, ``download``
    those a ``truncate_rate`` fault may cut.
    """

    method: str
    path: str
    handler: Handler
    provider: str
    group: str | None = None
    creates: bool = False
    download: bool = False


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]; ValueError names the parameter otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"Invalid '{name}': expected an integer, got {raw!r}.") from None
    if not low <= value <= high:
        raise ValueError(f"Invalid '{name}': must be between {low} and {high}, got {value}.")
    return value
