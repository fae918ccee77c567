"""The emulator's HTTP server: auth, injected faults, request ids and admin endpoints around every API.

``run_emulator`` serves it on the current event loop; ``EmulatorThread`` serves it from a daemon thread
for sync code. Keys are compared, never logged or echoed.
"""

from __future__ import annotations

import email.utils
import hmac
import random
import tempfile
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from ..wire.web import json_response
from .anthropic_api import AnthropicAPI
from .config import EmulatorConfig, FaultSpec
from .core import Clock, Context
from .envelopes import anthropic_error, gemini_error, mistral_error, openai_error, request_id, retry_headers
from .gemini_api import PREFIX as GEMINI_PREFIX
from .gemini_api import GeminiAPI
from .ledger import FaultRecord, Ledger
from .mistral_api import PREFIX as MISTRAL_PREFIX
from .mistral_api import MistralAPI
from .openai_api import OpenAIAPI
from .routes import REQUEST_ID, RESPONSE_HEADERS, TRUNCATE, Handler, RouteSpec

_FAULT_MESSAGES = {
    ("openai", 429): "Rate limit reached for requests. Please try again later.",
    ("openai", 500): "The server had an error while processing your request. Sorry about that!",
    ("openai", 503): "The server is overloaded or not ready yet.",
    ("anthropic", 429): "Number of requests has exceeded your rate limit. Please try again later.",
    ("anthropic", 500): "Internal server error",
    ("anthropic", 503): "Service unavailable",
    ("gemini", 429): "Resource has been exhausted (e.g. check quota).",
    ("gemini", 500): "An internal error has occurred. Please retry or report.",
    ("gemini", 503): "The model is overloaded. Please try again later.",
    ("mistral", 429): "Requests rate limit exceeded",
    ("mistral", 500): "Internal server error",
    ("mistral", 503): "Service unavailable",
}


class Server:
    """Builds the aiohttp application and applies the cross-cutting rules of each route."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.openai = OpenAIAPI(ctx)
        self.anthropic = AnthropicAPI(ctx)
        self.gemini = GeminiAPI(ctx)
        self.mistral = MistralAPI(ctx)
        self._rng = random.Random(ctx.config.seed)
        self._specs: dict[AbstractRoute, RouteSpec] = {}
        self._fault_counts: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=16 * 1024 * 1024)
        for spec in [*self.openai.routes(), *self.anthropic.routes(), *self.gemini.routes(),
                     *self.mistral.routes()]:
            route = app.router.add_route(spec.method, spec.path, spec.handler)
            self._specs[route] = spec
        app.router.add_get("/_emulator/health", self._health)
        app.router.add_get("/_emulator/ledger", self._ledger)
        app.router.add_get("/_emulator/config", self._get_config)
        app.router.add_patch("/_emulator/config", self._patch_config)
        app.router.add_post("/_emulator/clock", self._advance_clock)
        app.on_response_prepare.append(self._add_headers)
        return app

    # --- middleware --------------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = self._specs.get(request.match_info.route)
        if spec is None:
            return await self._unrouted(request, handler)
        self.ctx.ledger.add_call(f"{spec.method} {spec.path}")
        rid = request[REQUEST_ID] = request_id()
        if spec.provider == "anthropic":
            request[RESPONSE_HEADERS] = {"request-id": rid, "anthropic-organization-id": "org-emulator"}
        else:
            request[RESPONSE_HEADERS] = {"x-request-id": rid}
        refused = self._authenticate(request, spec.provider)
        if refused is not None:
            return refused
        fault = self._fault(request, spec)
        if fault is not None:
            return fault
        response = await handler(request)
        if spec.creates and response.status < 400 and self._draw(request, spec, "drop_after_create"):
            _drop(request)
        return response

    async def _unrouted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Admin routes pass through; unknown paths get the envelope of the provider they look like."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if request.path.startswith(GEMINI_PREFIX):
                return gemini_error(exc.status, f"Unrecognized request URL ({request.method} {request.path}).")
            if request.path.startswith(MISTRAL_PREFIX):
                return mistral_error(exc.status, f"Unrecognized request URL ({request.method} {request.path}).")
            if not request.path.startswith("/v1"):
                raise
            message = f"Unrecognized request URL ({request.method} {request.path})."
            if request.path.startswith("/v1/messages"):
                return anthropic_error(request, exc.status, message)
            return openai_error(exc.status, message)

    async def _add_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """The request's headers, and a ``Date`` read on the emulated clock: the provider's clock, which a
        client may use to reason about the provider's timestamps."""
        response.headers.update(request.get(RESPONSE_HEADERS, {}))
        response.headers["Date"] = email.utils.formatdate(self.ctx.clock.now(), usegmt=True)

    def _authenticate(self, request: web.Request, provider: str) -> web.Response | None:
        headers = request.headers
        bearer = headers.get("authorization", "")
        key = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""
        if provider == "gemini":
            if "upload_id" in request.query:
                return None  # the session URL is the credential of a resumable upload's data requests
            key = headers.get("x-goog-api-key", "").strip() or request.query.get("key", "")
            if not key:
                return gemini_error(403, "Method doesn't allow unregistered callers (callers without established "
                                    "identity). Please use API Key or other form of API consumer identity to call "
                                    "this API.")
            if not self._key_ok(key):
                return gemini_error(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")
            return None
        if provider == "mistral":
            if not key or not self._key_ok(key):
                return mistral_error(401, "Unauthorized")
            return None
        if provider == "openai":
            key = key or headers.get("api-key", "").strip()
            if not key:
                return openai_error(401, "You didn't provide an API key. You need to provide your API key in an "
                                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            if not self._key_ok(key):
                return openai_error(401, "Incorrect API key provided.", code="invalid_api_key")
            return None
        key = headers.get("x-api-key", "").strip() or key
        if not key:
            return anthropic_error(request, 401, "x-api-key header is required")
        if not self._key_ok(key):
            return anthropic_error(request, 401, "invalid x-api-key")
        if not headers.get("anthropic-version"):
            return anthropic_error(request, 400, "anthropic-version: header is required")
        return None

    def _key_ok(self, key: str) -> bool:
        allowed = self.ctx.config.api_keys
        if allowed is None:
            return True
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in allowed)

    # --- faults ------------------------------------------------------------------------------------------

    def _fault(self, request: web.Request, spec: RouteSpec) -> web.Response | None:
        """Draw the pre-handler faults of this route's group: a status to answer, or a dropped socket."""
        faults = self._spec_for(spec)
        if faults is None:
            return None
        draw = self._rng.random()
        for kind, rate in (("429", faults.rate_429), ("500", faults.rate_500), ("503", faults.rate_503),
                           ("drop", faults.drop_rate)):
            if draw < rate:
                if not self._count(request, spec, kind):
                    return None
                if kind == "drop":
                    _drop(request)
                    return web.Response(status=500)  # never sent: the socket is gone
                status = int(kind)
                headers = {"x-should-retry": "true"}
                if status == 429:
                    headers.update(retry_headers(faults.retry_after))
                message = _FAULT_MESSAGES[spec.provider, status]
                if spec.provider == "openai":
                    return openai_error(status, message, headers=headers)
                if spec.provider == "gemini":
                    return gemini_error(status, message, headers=headers)
                if spec.provider == "mistral":
                    return mistral_error(status, message, headers=headers)
                return anthropic_error(request, status, message, headers=headers)
            draw -= rate
        if spec.download and self._draw(request, spec, "truncate"):
            request[TRUNCATE] = True
        return None

    def _spec_for(self, spec: RouteSpec) -> FaultSpec | None:
        return self.ctx.config.fault_spec(spec.group) if spec.group else None

    def _draw(self, request: web.Request, spec: RouteSpec, kind: str) -> bool:
        """One independent draw of a post-handler fault (``drop_after_create``, ``truncate``)."""
        faults = self._spec_for(spec)
        if faults is None:
            return False
        rate = faults.drop_after_create_rate if kind == "drop_after_create" else faults.truncate_rate
        return rate > 0 and self._rng.random() < rate and self._count(request, spec, kind)

    def _count(self, request: web.Request, spec: RouteSpec, kind: str) -> bool:
        """Record one fault unless the spec's ``max_faults`` is used up."""
        assert spec.group is not None
        key = spec.group if spec.group in self.ctx.config.faults else "*"
        faults = self.ctx.config.faults[key]
        if faults.max_faults is not None and self._fault_counts[key] >= faults.max_faults:
            return False
        self._fault_counts[key] += 1
        self.ctx.ledger.add_fault(FaultRecord(group=spec.group, kind=kind, method=request.method,
                                              path=request.path, at=self.ctx.clock.now()))
        return True

    # --- admin -------------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def _ledger(self, request: web.Request) -> web.Response:
        return web.Response(body=self.ctx.ledger.to_json(), content_type="application/json")

    async def _get_config(self, request: web.Request) -> web.Response:
        return json_response(self.ctx.config.public())

    async def _patch_config(self, request: web.Request) -> web.Response:
        try:
            patch = msgspec.json.decode(await request.read(), type=dict[str, Any])
            self.ctx.config.update(patch)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(self.ctx.config.public())

    async def _advance_clock(self, request: web.Request) -> web.Response:
        """``{"advance": seconds}`` moves the emulated clock forward (expiry without waiting)."""
        try:
            body = msgspec.json.decode(await request.read(), type=_ClockAdvance)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_response({"error": str(exc)}, status=400)
        self.ctx.clock.advance(body.advance)
        return json_response({"offset": self.ctx.clock.offset, "now": self.ctx.clock.now()})


class _ClockAdvance(msgspec.Struct):
    advance: float


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


class Emulator:
    """A running emulator. ``config`` is live: mutate it and the next request sees the change."""

    def __init__(self, *, url: str, server: Server) -> None:
        self.url = url
        self.openai_base_url = url + "/v1"
        self.anthropic_base_url = url
        self.gemini_base_url = url + GEMINI_PREFIX  # the SDK and GeminiProvider add /v1 or /v1beta
        self.mistral_base_url = url + MISTRAL_PREFIX  # the SDK and MistralProvider add /v1
        self._server = server
        self._ctx = server.ctx

    @property
    def config(self) -> EmulatorConfig:
        return self._ctx.config

    @property
    def ledger(self) -> Ledger:
        return self._ctx.ledger

    @property
    def clock(self) -> Clock:
        return self._ctx.clock

    @property
    def data_dir(self) -> Path:
        return self._ctx.data_dir

    def sent_requests(self, batch_id: str) -> list[dict[str, Any]]:
        """The request lines of a batch as the client sent them (OpenAI input lines, Anthropic ``{custom_id,
        params}`` items, Gemini ``{key, request}`` lines or inline ``{request, metadata}`` items, Mistral
        ``{custom_id, body}`` lines). Reads the whole input: meant for tests of small batches."""
        server = self._server
        openai_batch = server.openai.batches.get(batch_id)
        if openai_batch is not None:
            path = openai_batch.input_path
        elif batch_id in server.anthropic.batches:
            path = server.anthropic.batches[batch_id].run.input_path
        elif batch_id in server.gemini.batches:
            path = server.gemini.batches[batch_id].run.input_path
        else:
            path = server.mistral.jobs[batch_id].run.input_path
        with open(path, "rb") as source:
            return [msgspec.json.decode(line) for line in source if line.strip()]

    def __repr__(self) -> str:
        return f"Emulator({self.url!r})"


@asynccontextmanager
async def run_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: Path | None = None,
) -> AsyncIterator[Emulator]:
    """Serve the emulator on ``host:port`` (0: a free port) until the block exits.

    Files go to ``data_dir`` (a temporary directory, removed afterwards, when None).
    """
    async with AsyncExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asyncbatch-emulator-")))
        data_dir.mkdir(parents=True, exist_ok=True)
        ctx = Context(config or EmulatorConfig(), Ledger(), Clock(), data_dir)
        server = Server(ctx)
        runner = web.AppRunner(server.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield Emulator(url=f"http://{host}:{bound_port}", server=server)


class EmulatorThread:
    """The same server in a daemon thread with its own event loop, for sync code and notebooks."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: Path | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        self._host, self._port, self._data_dir = host, port, data_dir
        self._ready = threading.Event()
        self._emulator: Emulator | None = None
        self._error: BaseException | None = None
        self._stop: anyio.Event | None = None
        self._portal: anyio.from_thread.BlockingPortal | None = None  # how another thread reaches the loop
        self._thread: threading.Thread | None = None

    def start(self) -> EmulatorThread:
        self._thread = threading.Thread(target=anyio.run, args=(self._serve,), name="asyncbatch-emulator",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    async def _serve(self) -> None:
        try:
            async with run_emulator(
                self.config, host=self._host, port=self._port, data_dir=self._data_dir
            ) as emulator, anyio.from_thread.BlockingPortal() as portal:
                self._emulator = emulator
                self._stop = anyio.Event()
                self._portal = portal
                self._ready.set()
                await self._stop.wait()
        except Exception as exc:  # reported by start(), in the caller's thread
            self._error = exc
        finally:
            self._ready.set()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._stop is not None and self._portal is not None and self._thread.is_alive():
            self._portal.call(self._stop.set)
        self._thread.join()
        self._thread = self._emulator = None

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def emulator(self) -> Emulator:
        if self._emulator is None:
            raise RuntimeError("EmulatorThread is not running: call start() first")
        return self._emulator

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def openai_base_url(self) -> str:
        return self.emulator.openai_base_url

    @property
    def anthropic_base_url(self) -> str:
        return self.emulator.anthropic_base_url

    @property
    def gemini_base_url(self) -> str:
        return self.emulator.gemini_base_url

    @property
    def mistral_base_url(self) -> str:
        return self.emulator.mistral_base_url

    @property
    def ledger(self) -> Ledger:
        return self.emulator.ledger

    @property
    def clock(self) -> Clock:
        return self.emulator.clock

    @property
    def data_dir(self) -> Path:
        return self.emulator.data_dir
