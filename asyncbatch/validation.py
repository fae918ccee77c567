"""Validation and routing of incoming requests, before anything is stored or sent.

Every request is checked here (shape, custom_id, method, url, body), given its route (its model picks the
provider, see ``engine.routing``), checked by that provider's own rules, and turned into a ``NewRequest``
carrying its raw body bytes: the body is stored as given, re-encoded only when the route sends another model
name (``anthropic/claude-...`` is sent as ``claude-...``). Sharding happens later, in the engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .engine.pool import ProviderPool
from .engine.routing import Route, Router
from .errors import JSONLError, ValidationError
from .jsonl import CHUNK_BYTES, read_chunks
from .model import NewRequest, ProviderSpec, Request
from .providers.base import Provider

MAX_CUSTOM_ID = 512
MAX_METADATA_PAIRS = 15  # OpenAI allows 16; one is ours (the shard token)
NATIVE_MESSAGES_URL = "/v1/messages"  # a native Anthropic `{custom_id, params}` line is stored under this url
_LINE_OVERHEAD = 64  # JSON keys and punctuation around custom_id, url and body in a spooled line
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AT_PATH = re.compile(r"at `\$\.?([^`]*)`")
_TOO_DEEP = "JSON nested too deeply"

RequestSource = str | os.PathLike[str] | Iterable[Request | Mapping[str, Any]] | AsyncIterable[
    Request | Mapping[str, Any]
]


class _InputLine(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One input line: an OpenAI batch line, a native Anthropic ``{custom_id, params}`` line, or a native
    Gemini ``{key, request}`` line."""

    custom_id: str | None = None
    method: str | None = None
    url: str | None = None
    body: msgspec.Raw = msgspec.Raw()  # empty when absent (msgspec cannot decode `Raw | None`)
    params: msgspec.Raw = msgspec.Raw()
    key: str | None = None
    request: msgspec.Raw = msgspec.Raw()


_decoder = msgspec.json.Decoder(_InputLine)


class Validator:
    """Checks requests for one job: against the job's endpoint (if it has one) and the provider each one's model
    routes to. ``routes`` collects the routes the job's requests use (what the job records).

    With only ``provider``, every request goes to it but for the ``provider/model`` and ``claude-*`` names of
    ``Router``; a ``router`` (and the ``pool`` its providers come from) replaces that.
    """

    def __init__(
        self, provider: Provider, endpoint: str | None, *, router: Router | None = None,
        pool: ProviderPool | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.pool = pool or ProviderPool()
        default = self.pool.add(provider) if router is None else router.default.spec
        self.router = router or Router(default)
        self.routes: dict[str, ProviderSpec] = {}
        self.models: set[tuple[str, str]] = set()  # (provider, model) of every request, for the price check
        self._by_model: dict[str | None, tuple[Route, Provider]] = {}

    @property
    def max_line_bytes(self) -> int:
        """The longest line read: what one batch of the job's default provider holds (each request is then
        checked against the limit of the provider it routes to)."""
        return self.pool.get(self.router.default.spec).limits.max_bytes

    def _route(self, model: object) -> tuple[Route, Provider]:
        key = model if isinstance(model, str) else None
        found = self._by_model.get(key)
        if found is None:
            route = self.router.route(key)
            found = self._by_model[key] = (route, self.pool.get(route.spec))
            self.routes.setdefault(route.name, route.spec)
            if key is not None:
                self.models.add((route.spec.name, route.model or key))
        return found

    def from_line(self, number: int, raw: bytes) -> NewRequest:
        try:
            parsed = _decoder.decode(raw)
        except msgspec.ValidationError as exc:
            field = _field_of(str(exc))
            raise JSONLError(f"invalid request line: {exc}", line=number, field=field) from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            if not _is_utf8(raw):
                raise JSONLError(_not_utf8(raw), line=number) from None
            if not raw.lstrip().startswith(b"{"):
                raise JSONLError("each line must be one JSON object", line=number) from None
            raise JSONLError(f"malformed JSON: {exc}", line=number) from None
        except RecursionError:
            raise JSONLError(_TOO_DEEP, line=number) from None
        return self._validate(number, parsed, raw)

    def from_request(self, number: int, item: Request | Mapping[str, Any]) -> NewRequest:
        if not isinstance(item, Request | Mapping):
            raise ValidationError(
                f"expected a Request or a mapping, got {type(item).__name__}", line=number
            )
        try:
            if isinstance(item, Request):
                parsed = _InputLine(
                    custom_id=item.custom_id, method=item.method, url=item.url,
                    body=msgspec.Raw(msgspec.json.encode(item.body)),
                )
            else:
                parsed = msgspec.json.decode(msgspec.json.encode(item), type=_InputLine)
        except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as exc:
            raise ValidationError(f"invalid request: {exc}", line=number, field=_field_of(str(exc))) from None
        except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 (hence no JSON) can carry it
            raise ValidationError(f"invalid request: a string holds {exc.reason}", line=number) from None
        except RecursionError:
            raise ValidationError(_TOO_DEEP, line=number) from None
        return self._validate(number, parsed)

    def _validate(self, number: int, line: _InputLine, raw: bytes | None = None) -> NewRequest:
        """Runs once per request: the common case (an ASCII custom_id, a valid body) takes no slow path.

        ``raw`` is the line as read from a file, checked for repeated keys (a mapping cannot hold any)."""
        routed: tuple[Route, Provider] | None = None  # a native line names its provider itself
        if line.request or line.key is not None:
            line, routed = self._from_gemini(number, line)
        custom_id = line.custom_id
        if custom_id is None:
            raise ValidationError("custom_id is missing", line=number, field="custom_id")
        if not custom_id.strip():
            raise ValidationError("custom_id is empty", line=number, field="custom_id")
        if len(custom_id) > MAX_CUSTOM_ID:
            raise ValidationError(
                f"custom_id is longer than {MAX_CUSTOM_ID} characters", line=number, custom_id=custom_id[:40] + "...",
                field="custom_id",
            )
        ascii_id = custom_id.isascii()
        if not (ascii_id and custom_id.isprintable()) and _CONTROL.search(custom_id):
            raise ValidationError("custom_id contains control characters", line=number, custom_id=custom_id,
                                  field="custom_id")
        if line.params:
            if line.body or line.url is not None or line.method is not None:
                raise _invalid(number, custom_id, "params",
                               "a line has either `params` (Anthropic format) or method/url/body (OpenAI format)")
            url: str | None = NATIVE_MESSAGES_URL
            raw_body = line.params
        else:
            if line.method is not None and line.method != "POST":
                raise _invalid(number, custom_id, "method", f"method must be POST, got {line.method!r}")
            url = line.url if line.url is not None else self.endpoint
            if url is None:
                raise _invalid(number, custom_id, "url", "url is missing (and the job has no endpoint)")
            if self.endpoint is not None and url != self.endpoint:
                raise _invalid(number, custom_id, "url",
                               f"url {url!r} does not match the job's endpoint {self.endpoint!r}")
            if not line.body:
                raise _invalid(number, custom_id, "body", "body is missing")
            raw_body = line.body
        body_bytes = bytes(raw_body)
        try:
            body = msgspec.json.decode(body_bytes)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            if not _is_utf8(body_bytes):
                raise JSONLError(_not_utf8(body_bytes), line=number, custom_id=custom_id, field="body") from None
            raise _invalid(number, custom_id, "body", f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise _invalid(number, custom_id, "body", _TOO_DEEP) from None
        if not isinstance(body, dict):
            raise _invalid(number, custom_id, "body", f"body must be a JSON object, got {type(body).__name__}")
        if raw is not None and _keys_may_repeat(raw, line, body):
            _refuse_repeated_keys(number, raw, custom_id)
        assert url is not None
        model = body.get("model")
        route, provider = routed or self._route(model)
        if route.model is not None and routed is None:
            model = body["model"] = route.model
            body_bytes = msgspec.json.encode(body)
        if isinstance(model, str) and (not model or model.isspace()):  # also what is left after a provider prefix
            raise _invalid(number, custom_id, "body.model", "model is empty")
        request = Request(custom_id=custom_id, body=body, url=url)
        try:
            provider.check(request)
        except ValidationError as exc:
            raise type(exc)(exc.reason, line=number, custom_id=custom_id, field=exc.field) from None
        size = len(body_bytes) + (len(custom_id) if ascii_id else len(custom_id.encode())) + len(url) + _LINE_OVERHEAD
        max_bytes = provider.limits.max_bytes
        if size > max_bytes:
            raise _invalid(number, custom_id, "body", f"the request takes {size} bytes; one {provider.name} batch "
                           f"holds at most {max_bytes}")
        return NewRequest(
            custom_id=custom_id, route=route.name, url=url, model=provider.model_of(request), body=body_bytes,
            size=size, line=number,
        )


    def _from_gemini(self, number: int, line: _InputLine) -> tuple[_InputLine, tuple[Route, Provider]]:
        """A native Gemini line (``{"key", "request": GenerateContentRequest}``) as the OpenAI-shaped line it
        stands for: ``key`` is the custom_id, the url names the model's method, and the model goes to Gemini
        (``request.model``, else the job's default provider when that is Gemini)."""
        if line.custom_id is not None or line.body or line.params or line.url is not None:
            raise JSONLError("a Gemini line has `key` and `request` only (no custom_id, url, body or params)",
                             line=number, field="key")
        if not line.request or line.key is None:
            raise JSONLError("a Gemini line needs both `key` and `request`", line=number,
                             field="request" if line.key is not None else "key")
        try:
            request = msgspec.json.decode(bytes(line.request))
        except msgspec.DecodeError as exc:
            raise JSONLError(f"request is not valid JSON: {exc}", line=number, custom_id=line.key,
                             field="request") from None
        if not isinstance(request, dict):
            raise JSONLError("request must be a JSON object", line=number, custom_id=line.key, field="request")
        named = request.get("model")
        if isinstance(named, str) and named:
            route, provider = self._route(f"gemini/{named.removeprefix('models/')}")
        elif self.router.default.spec.name == "gemini":
            route, provider = self._route(None)
        else:
            raise _invalid(number, line.key, "request.model", "a Gemini line names no model (and the job's "
                           "provider is not Gemini): put the model in request.model")
        native = getattr(provider, "native_request", None)
        if native is None:
            raise _invalid(number, line.key, "request", f"{provider.name} does not take Gemini lines")
        try:
            converted: Request = native({"key": line.key, "request": request}, model=route.model)
        except ValidationError as exc:
            raise type(exc)(exc.reason, line=number, custom_id=line.key, field=exc.field) from None
        body = msgspec.json.encode(converted.body)  # the model is in the url, as Gemini's batch lines want it
        return _InputLine(custom_id=converted.custom_id, url=converted.url, body=msgspec.Raw(body)), (route, provider)


class ContentDigest:
    """A digest of a job's requests as stored (custom_id, route, url, body as given, in input order): a submit
    retried with the same requests (the same file, the same dicts) has the same digest, one with any request
    changed, added or left out another. Bodies count byte for byte, as they are stored."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, chunk: Sequence[NewRequest]) -> None:
        update = self._hash.update
        for request in chunk:
            custom_id = request.custom_id.encode()
            update(b"%d:%s %s %s %d:" % (len(custom_id), custom_id, request.route.encode(), request.url.encode(),
                                         len(request.body)))
            update(request.body)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _keys_may_repeat(raw: bytes, line: _InputLine, body: dict[str, Any]) -> bool:
    """False when no object in the line repeats a key, told without a second parse of it.

    Outside strings, JSON has a colon after each key and nowhere else; inside them a colon stays a colon,
    unless written ``\\u003a``. Decoding keeps one value per key, so the decoded line has as many colons as
    the raw one exactly when no key repeats, and fewer when one does. The decoded side is counted on the body
    encoded again, plus the top-level keys and their values' colons. Lines with a ``\\u003a`` (rare) answer
    True, and the caller parses them exactly.
    """
    if b"\\" in raw and b"\\u003" in raw:
        return True
    method, url = line.method or "", line.url or ""
    kept = 2 + (line.method is not None) + (line.url is not None)  # custom_id, body (or params), method, url
    kept += (line.custom_id or "").count(":") + method.count(":") + url.count(":")
    return raw.count(b":") != kept + msgspec.json.encode(body).count(b":")


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as ``json.loads`` read it: its keys in order, a repeated one kept."""


def _refuse_repeated_keys(number: int, raw: bytes, custom_id: str) -> None:
    """Parse the line keeping every key, and refuse it if an object repeats one (naming where): which of the
    values counts would depend on the parser, ours or the provider's."""
    try:
        found = _repeated_key(json.loads(raw, object_pairs_hook=_Pairs), "")
    except RecursionError:
        raise JSONLError(_TOO_DEEP, line=number) from None
    if found is None:
        return
    where, key = found
    field = f"{where}.{key}" if where else key
    raise JSONLError(f"the key {key!r} appears twice in one object; which value counts would depend on the "
                     "parser, so the line is ambiguous", line=number,
                     custom_id=None if field == "custom_id" else custom_id, field=field)


def _repeated_key(value: Any, path: str) -> tuple[str, str] | None:
    """(path of the object, key) of the first object in ``value`` that repeats a key, depth first."""
    if isinstance(value, _Pairs):
        seen: set[str] = set()
        for key, _ in value:
            if key in seen:
                return path, key
            seen.add(key)
        for key, item in value:
            if found := _repeated_key(item, f"{path}.{key}" if path else key):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _repeated_key(item, f"{path}[{i}]"):
                return found
    return None


def check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Batch metadata as the providers accept it (OpenAI's rules: the strictest)."""
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValidationError(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
                              field="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValidationError("metadata keys and values must be strings", field=f"metadata.{key}")
        if len(key) > 64 or len(value) > 512:
            raise ValidationError("metadata keys are at most 64 characters, values at most 512",
                                  field=f"metadata.{key}")
    return dict(metadata)


async def validated_chunks(
    source: RequestSource, validator: Validator, *, chunk: int = 5000
) -> AsyncIterator[list[NewRequest]]:
    """Validate ``source`` (a JSONL path, or an iterable / async iterable of requests) chunk by chunk."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not await anyio.Path(path).is_file():
            raise JSONLError(f"no such file: {os.fspath(path)!r}")
        async for lines in read_chunks(path, chunk_lines=chunk, max_line_bytes=validator.max_line_bytes):
            yield [validator.from_line(number, raw) for number, raw in lines]
        return
    batch: list[NewRequest] = []
    size = 0  # bytes of the bodies in ``batch``: a chunk also ends at CHUNK_BYTES, however large the requests
    number = 0

    def add(item: Request | Mapping[str, Any]) -> bool:
        nonlocal size
        request = validator.from_request(number, item)
        batch.append(request)
        size += request.size
        return len(batch) >= chunk or size >= CHUNK_BYTES

    if isinstance(source, AsyncIterable):
        async for item in source:
            number += 1
            if add(item):
                yield batch
                batch, size = [], 0
    else:
        for item in source:
            number += 1
            if add(item):
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _is_utf8(raw: bytes) -> bool:
    """Checked only once decoding failed: msgspec reports bad UTF-8 as ``UnicodeDecodeError`` up to 0.22 and
    as ``DecodeError("Invalid UTF-8 ...")`` from 0.23, and either way the user is owed the line's JSONLError."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _not_utf8(raw: bytes) -> str:
    """Where a text stops being UTF-8 (the line or body as given, so that the user can find the byte)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8: byte {exc.start + 1} is {raw[exc.start:exc.start + 1]!r} ({exc.reason})"
    return "not valid UTF-8"


def _invalid(number: int, custom_id: str, field: str, message: str) -> ValidationError:
    return ValidationError(message, line=number, custom_id=custom_id, field=field)


def _field_of(message: str) -> str | None:
    match = _AT_PATH.search(message)
    if match:
        return match.group(1) or None
    unknown = re.search(r"unknown field `([^`]+)`", message)
    return unknown.group(1) if unknown else None
