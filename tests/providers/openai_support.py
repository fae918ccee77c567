"""Helpers for the provider tests: spool files built through the provider, polling a batch to its end, and a
recording stub host.

The stub host is a real aiohttp server on 127.0.0.1 for wire shapes the emulator does not speak (Azure's
``api-version`` routes, Groq's and Together's variants); everything else runs against the emulator.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
from aiohttp import web

from asyncbatch.http import RetryPolicy
from asyncbatch.model import Request, ShardInfo
from asyncbatch.providers.base import Provider, RemoteBatch

#: Retries as in production but with tiny delays, so fault tests stay fast.
FAST_RETRY = RetryPolicy(max_retries=8, base_delay=0.01, max_delay=0.05)


async def until_ended(provider: Provider, batch: RemoteBatch) -> RemoteBatch:
    """Poll ``batch`` until it ends (the emulator completes at once by default)."""
    with anyio.fail_after(10):
        while not batch.status.is_terminal:
            await anyio.sleep(0.01)
            batch = await provider.retrieve(batch.id)
    return batch


def chat(custom_id: str, text: str, model: str = "gpt-5.4-mini") -> Request:
    return Request(
        custom_id=custom_id, body={"model": model, "messages": [{"role": "user", "content": text}]}
    )


def write_shard(
    provider: Provider,
    spool_dir: Path,
    requests: Iterable[Request],
    *,
    shard_id: int = 1,
    job_id: str = "job_test",
    token: str | None = None,
    metadata: Mapping[str, str] | None = None,
    created_at: float | None = None,
) -> ShardInfo:
    """Write the spool file exactly as the engine would and describe it as a ShardInfo."""
    token = token or uuid.uuid4().hex
    requests = list(requests)
    spool = spool_dir / f"{job_id}-{shard_id}.spool.jsonl"
    with spool.open("wb") as out:
        for rid, request in enumerate(requests, start=1):
            wire_id = provider.wire_id(request.custom_id, rid, token)
            out.write(provider.encode_line(wire_id, request.url, msgspec.json.encode(request.body)) + b"\n")
    return ShardInfo(
        id=shard_id,
        job_id=job_id,
        token=token,
        endpoint=requests[0].url,
        model=str(requests[0].body.get("model")),
        request_count=len(requests),
        bytes=spool.stat().st_size,
        spool_path=str(spool),
        completion_window="24h",
        metadata=dict(metadata or {}),
        created_at=time.time() if created_at is None else created_at,
    )


class Seen(msgspec.Struct):
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StubHost:
    """Records every request it receives; ``routes`` maps "METHOD /path" to a handler."""

    def __init__(self, url: str, seen: list[Seen]) -> None:
        self.url = url
        self.seen = seen

    def paths(self, method: str | None = None) -> list[str]:
        return [s.path for s in self.seen if method is None or s.method == method]


@asynccontextmanager
async def stub_host(routes: Mapping[str, Handler]) -> AsyncIterator[StubHost]:
    seen: list[Seen] = []

    async def dispatch(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            Seen(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        handler = routes.get(f"{request.method} {request.path}")
        if handler is None:
            return web.json_response(
                {"error": {"message": "no route", "type": "invalid_request_error"}}, status=404
            )
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield StubHost(f"http://127.0.0.1:{port}", seen)
    finally:
        await runner.cleanup()


def json_handler(payload: Any, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=msgspec.json.encode(payload), status=status, content_type="application/json")

    return handler
