"""The gateway's HTTP routes (aiohttp): OpenAI's files, batches and models under ``/v1`` and without it, as
LiteLLM serves them, and LiteLLM's key admin routes for the master key.

Every answer is OpenAI's shape, and every error OpenAI's envelope with its status code, so that the official
``openai`` SDK parses all of them; an unexpected failure is a 500 in the same envelope, logged, never a trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import BodyPartReader, web

from ..errors import StoreError
from ..wire.web import query_int, request_key
from . import ids
from .files import receive_upload
from .keys import Caller, bearer, new_key_record, token_of
from .objects import ApiError, CreateBatchBody, FileDeleted, ListPage, file_object, json_response
from .service import Gateway

log = logging.getLogger("asyncbatch.gateway")

_T = TypeVar("_T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CALLER = request_key("caller", Caller)  # the authenticated caller of a request


class KeyGenerate(msgspec.Struct, kw_only=True):
    """``POST /key/generate``: LiteLLM's fields that the gateway uses (others are ignored)."""

    models: list[str] = msgspec.field(default_factory=list)
    team_id: str | None = None
    max_budget: float | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class KeyDelete(msgspec.Struct, kw_only=True):
    keys: list[str]


def build_app(gateway: Gateway) -> web.Application:
    routes = Routes(gateway)
    app = web.Application(middlewares=[routes.middleware])
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/files", routes.upload)
        app.router.add_get(f"{prefix}/files", routes.list_files)
        app.router.add_get(f"{prefix}/files/{{file_id}}", routes.get_file)
        app.router.add_delete(f"{prefix}/files/{{file_id}}", routes.delete_file)
        app.router.add_get(f"{prefix}/files/{{file_id}}/content", routes.file_content)
        app.router.add_post(f"{prefix}/batches", routes.create_batch)
        app.router.add_get(f"{prefix}/batches", routes.list_batches)
        app.router.add_get(f"{prefix}/batches/{{batch_id}}", routes.get_batch)
        app.router.add_post(f"{prefix}/batches/{{batch_id}}/cancel", routes.cancel_batch)
        app.router.add_get(f"{prefix}/models", routes.models)
    app.router.add_post("/key/generate", routes.generate_key)
    app.router.add_post("/key/delete", routes.delete_keys)
    app.router.add_get("/key/info", routes.key_info)
    app.router.add_get("/health/liveliness", routes.health)
    return app


class Routes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path != "/health/liveliness":
                request[_CALLER] = await self.gateway.caller(bearer(request.headers.get("Authorization")))
            return await handler(request)
        except ApiError as exc:
            return json_response(exc.body(), status=exc.status)
        except web.HTTPException as exc:  # no such route, or method
            message = "Unknown request URL: " if exc.status == 404 else f"{exc.reason}: "
            return json_response(ApiError(exc.status, message + f"{request.method} {request.path}.").body(),
                                 status=exc.status)
        except StoreError as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            return json_response(ApiError(503, "The gateway's store is unavailable; try again.").body(), status=503)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return json_response(ApiError(500, "The gateway failed to process the request.").body(), status=500)

    @staticmethod
    def caller(request: web.Request) -> Caller:
        found: Caller = request[_CALLER]
        return found

    # --- files ---------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        if not request.content_type.startswith("multipart/form-data"):
            raise ApiError(400, "Expected a multipart/form-data body with the fields 'purpose' and 'file'.")
        reader = await request.multipart()
        purpose: str | None = None
        stored = None
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file" and stored is None:
                    if purpose not in (None, "batch"):
                        raise _purpose(purpose)
                    stored = await receive_upload(self.gateway.store, part, owner=caller.owner,
                                                  max_bytes=self.gateway.config.max_file_bytes)
                elif part.name == "purpose":
                    purpose = (await part.text()).strip()
                else:
                    await part.release()
            if stored is None:
                raise ApiError(400, "Missing required parameter: 'file'.", param="file")
            if purpose is None:
                raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
            if purpose != "batch":
                raise _purpose(purpose)
        except BaseException:
            if stored is not None:
                await self.gateway.store.delete_file(stored.id, caller.owner)
            raise
        return json_response(file_object(stored))

    async def list_files(self, request: web.Request) -> web.Response:
        caller = self.caller(request)
        limit = _query_int(request, "limit", 10_000, 1, 10_000)
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid value for 'order': {order!r}.", param="order")
        after = request.query.get("after")
        if after is not None and await self.gateway.store.get_file(after, caller.owner) is None:
            raise ApiError(400, f"Invalid value for 'after': no file with id {after!r}.", param="after")
        found = await self.gateway.store.list_files(caller.owner, purpose=request.query.get("purpose"), after=after,
                                                    limit=limit + 1, newest_first=order == "desc")
        return _page([file_object(f) for f in found[:limit]], len(found) > limit)

    async def get_file(self, request: web.Request) -> web.Response:
        file = await self.gateway.file(self.caller(request), request.match_info["file_id"])
        return json_response(file_object(file))

    async def delete_file(self, request: web.Request) -> web.Response:
        caller, file_id = self.caller(request), request.match_info["file_id"]
        if not await self.gateway.store.delete_file(file_id, caller.owner):
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        return json_response(FileDeleted(id=file_id))

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        """Streamed: an upload chunk by chunk from the store, an output file line by line from the results."""
        file, chunks = await self.gateway.content(self.caller(request), request.match_info["file_id"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = file.bytes
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    # --- batches -------------------------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=CreateBatchBody)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ApiError(400, f"Invalid request body: {exc}") from None
        batch = await self.gateway.create_batch(self.caller(request), body)
        return json_response(await self.gateway.view(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        limit = _query_int(request, "limit", 20, 1, 100)
        views, more = await self.gateway.list_batches(self.caller(request), after=request.query.get("after"),
                                                      limit=limit)
        return _page(views, more)

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = await self.gateway.batch(self.caller(request), request.match_info["batch_id"])
        return json_response(await self.gateway.view(batch))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        return json_response(await self.gateway.cancel(self.caller(request), request.match_info["batch_id"]))

    async def models(self, request: web.Request) -> web.Response:
        config = self.gateway.config
        data = [{"id": name, "object": "model", "created": 0, "owned_by": config.models[name].provider}
                for name in self.gateway.models_for(self.caller(request))]
        return json_response({"object": "list", "data": data})

    # --- keys ----------------------------------------------------------------------------------------------

    def _admin(self, request: web.Request) -> None:
        if not self.caller(request).is_master:
            raise ApiError(403, "Only the gateway's master key may manage keys.", type="permission_error")

    async def generate_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        body = _decode(await request.read(), KeyGenerate)
        self.gateway.check_models(body.models)
        if body.max_budget is not None and body.max_budget < 0:
            raise ApiError(400, "max_budget must be 0 or more.", param="max_budget")
        key = ids.virtual_key()
        record = new_key_record(key, team_id=body.team_id, models=body.models, max_budget=body.max_budget,
                                metadata=body.metadata, now=time.time())
        await self.gateway.store.add_key(record)
        return json_response({"key": key, "key_name": f"sk-...{key[-4:]}", "expires": None,
                              **await self.gateway.key_info(record)})

    async def delete_keys(self, request: web.Request) -> web.Response:
        self._admin(request)
        body = _decode(await request.read(), KeyDelete)
        tokens = {_token(k): k for k in body.keys}
        deleted = await self.gateway.store.delete_keys(list(tokens))
        if not deleted:
            raise ApiError(404, "None of these keys exist.", param="keys")
        return json_response({"deleted_keys": [tokens[t] for t in deleted]})

    async def key_info(self, request: web.Request) -> web.Response:
        self._admin(request)
        key = request.query.get("key")
        if not key:
            raise ApiError(400, "Missing required parameter: 'key'.", param="key")
        record = await self.gateway.store.get_key(_token(key))
        if record is None:
            raise ApiError(404, "No such key.", param="key")
        return json_response({"key": key, "info": await self.gateway.key_info(record)})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="I'm alive!")


def _token(key: str) -> str:
    """Keys are named by the key itself or by its token (the hash ``/key/generate`` and ``/key/info`` give)."""
    is_token = len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    return key if is_token else token_of(key)


def _purpose(purpose: str) -> ApiError:
    return ApiError(400, f"Invalid value for 'purpose': {purpose!r}. This gateway takes batch input files only: "
                    "purpose must be 'batch'.", param="purpose")


def _page(items: list[Any], has_more: bool) -> web.Response:
    return json_response(ListPage(data=items, first_id=items[0].id if items else None,
                                  last_id=items[-1].id if items else None, has_more=has_more))


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        return query_int(request, name, default, low, high)
    except ValueError as exc:
        raise ApiError(400, str(exc), param=name) from None


def _decode(raw: bytes, kind: type[_T]) -> _T:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, f"Invalid request body: {exc}") from None

