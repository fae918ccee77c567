"""aiohttp helpers of the package's servers: JSON answers, keys of a request's own mapping, query integers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

JSON = "application/json"


def json_response(
    payload: object, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type=JSON, headers=headers
    )


def request_key(name: str, kind: type[Any]) -> Any:
    """A key of the request's own mapping: ``web.RequestKey`` where aiohttp has it (3.14+, which warns about
    plain string keys), else a string. The emulator ships with the library and runs on the oldest aiohttp the
    project supports."""
    make = getattr(web, "RequestKey", None)
    return make(name, kind) if make is not None else f"asyncbatch.{name}"


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
