"""How an API module describes its endpoints to the server: path, handler, provider and fault group."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from ..wire.web import request_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


REQUEST_ID = request_key("request_id", str)
RESPONSE_HEADERS = request_key("response_headers", dict)
TRUNCATE = request_key("truncate", bool)  # a truncate fault was drawn for this download


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
