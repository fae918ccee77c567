"""One aiohttp session per provider: retries with jittered backoff, Retry-After, streaming, redaction.

The retry policy follows the official SDKs (408/409/429/5xx and connection errors are retried, the
server's ``x-should-retry`` wins, ``retry-after-ms`` then ``retry-after`` are honoured) with more attempts,
because a batch client has hours, not seconds. Secrets passed in ``secrets`` are scrubbed from every
message that leaves this module.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

import aiohttp
import anyio
import msgspec

from .errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    TransientError,
)

log = logging.getLogger("asyncbatch.http")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
CHUNK = 1 << 16


class Response(msgspec.Struct, kw_only=True):
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class RetryPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """How hard to try one HTTP call. ``max_retry_after`` caps how long a server may make us wait."""

    max_retries: int = 8
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 300.0

    def backoff(self, attempt: int) -> float:
        delay: float = min(self.base_delay * 2**attempt, self.max_delay)
        return delay * (1 - 0.25 * random.random())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if present."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


class HttpClient:
    """A small retrying JSON/file client bound to one base URL and one set of auth headers."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        secrets: Sequence[str] = (),
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._secrets = [s for s in secrets if s]
        self.retry = retry or RetryPolicy()
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        # A streamed body is read at the pace of its consumer (ingesting a large results file takes minutes):
        # no limit on the whole, only on each wait for more bytes.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show headers: they hold the key
        return f"HttpClient({self.base_url!r})"

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, connector=connector
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"

    # --- calls -------------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        form: Any = None,
        idempotent: bool = True,
    ) -> Response:
        """One call with retries. ``form`` is a zero-argument callable returning fresh FormData per try.

        ``idempotent=False`` (creating a batch) retries only what surely did not reach the server (connection
        refused, 429); an ambiguous failure (dropped connection, 5xx) is raised so that the caller can look
        for what the call may have created before trying again.
        """
        attempt = 0
        while True:
            try:
                async with self._limiter:
                    data = form() if form is not None else None
                    body = msgspec.json.encode(json) if json is not None else None
                    req_headers = dict(headers or {})
                    if body is not None:
                        req_headers.setdefault("content-type", "application/json")
                    async with self.session.request(
                        method, self.url(path), params=params, data=body if body is not None else data,
                        headers=req_headers,
                    ) as resp:
                        payload = await resp.read()
                        response = Response(status=resp.status, headers=dict(resp.headers), body=payload)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                error: ProviderError = ConnectionFailedError(self.redact(f"{method} {path}: {exc!r}"))
                if not idempotent and not isinstance(exc, aiohttp.ClientConnectorError):
                    raise error from None
                delay = self.retry.backoff(attempt)
            else:
                if response.status < 400:
                    return response
                error = self.error_for(method, path, response)
                hinted = self._retry_delay(response, attempt)
                if hinted is None or (not idempotent and response.status != 429):
                    raise error
                delay = hinted
            if attempt >= self.retry.max_retries:
                raise error
            log.debug("retrying %s %s in %.2fs after %s", method, path, delay, error)
            attempt += 1
            await anyio.sleep(delay)

    async def lines(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """The non-blank lines of a response body with their 1-based numbers (as ``jsonl.iter_lines`` gives a
        file's), as they arrive: nothing is written to disk and the caller's work overlaps the transfer.

        A body that breaks or ends short raises ``ConnectionFailedError`` (retryable) after the lines that
        did arrive whole; a cut last line is never yielded. Whatever the caller did with the lines must
        therefore be safe to do again when it starts over. Close it in the task that iterates it
        (``contextlib.aclosing``): it holds a response and one of the client's connection slots.
        """
        async with self._limiter, contextlib.AsyncExitStack() as stack:
            resp = await self._get_body(stack, path, headers)
            size = number = 0
            partial: list[bytes] = []  # pieces of a line that has not ended yet (a long line is joined once)
            try:
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        partial.append(chunk)
                        continue
                    complete = b"".join((*partial, chunk[:end])) if partial else chunk[:end]
                    partial = [chunk[end + 1:]]
                    for line in complete.split(b"\n"):
                        number += 1
                        if line.strip():
                            yield number, line
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                raise ConnectionFailedError(self.redact(f"GET {path}: {exc!r}")) from None
            expected = resp.content_length
            if expected is not None and size != expected:
                raise ConnectionFailedError(f"GET {path}: body cut at {size} of {expected} bytes")
            if (last := b"".join(partial)).strip():
                yield number + 1, last

    async def _get_body(
        self, stack: contextlib.AsyncExitStack, path: str, headers: Mapping[str, str] | None
    ) -> aiohttp.ClientResponse:
        """A successful GET whose body is still to be read (closed with ``stack``). Error answers and failed
        connections are retried as for ``request``; nothing of a body has been handed out before that."""
        attempt = 0
        while True:
            try:
                resp = await stack.enter_async_context(
                    self.session.get(self.url(path), headers=headers, timeout=self._stream_timeout)
                )
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                error: ProviderError = ConnectionFailedError(self.redact(f"GET {path}: {exc!r}"))
                delay = self.retry.backoff(attempt)
            else:
                if resp.status < 400:
                    return resp
                response = Response(status=resp.status, headers=dict(resp.headers), body=await resp.read())
                error = self.error_for("GET", path, response)
                hinted = self._retry_delay(response, attempt)
                if hinted is None:
                    raise error
                delay = hinted
            if attempt >= self.retry.max_retries:
                raise error
            log.debug("retrying GET %s in %.2fs after %s", path, delay, error)
            attempt += 1
            await anyio.sleep(delay)

    # --- errors ------------------------------------------------------------------------------------------

    def _retry_delay(self, response: Response, attempt: int) -> float | None:
        should = response.headers.get("x-should-retry")
        if should == "false":
            return None
        if should != "true" and response.status not in RETRYABLE_STATUS:
            return None
        hinted = parse_retry_after(response.headers)
        if hinted is not None:
            return hinted if hinted <= self.retry.max_retry_after else None
        return self.retry.backoff(attempt)

    def error_for(self, method: str, path: str, response: Response) -> ProviderError:
        """Build the typed error for a >= 400 response from the provider's error envelope."""
        message, code, etype = _parse_error_envelope(response.body)
        request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        text = self.redact(f"{method} {path}: {message}")
        status = response.status
        # every string the provider sent back is scrubbed: a server (or proxy) may echo what it was sent
        code, etype, request_id = (self.redact(v) if v is not None else None for v in (code, etype, request_id))
        kwargs: dict[str, Any] = {"status": status, "code": code, "type": etype, "request_id": request_id}
        if status == 429:
            return RateLimitedError(text, retry_after=parse_retry_after(response.headers), **kwargs)
        if status in RETRYABLE_STATUS:
            return TransientError(text, **kwargs)
        if status in (401, 403) or (status == 400 and b"API_KEY_INVALID" in response.body):
            return AuthenticationError(text, **kwargs)  # Google answers a wrong key with 400 API_KEY_INVALID
        if status == 404:
            return NotFoundError(text, **kwargs)
        if 400 <= status < 500:
            return BadRequestError(text, **kwargs)
        return TransientError(text, **kwargs)


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail | str | None = None
    message: str | None = None  # Mistral: {"object": "error", "message", "type", "code"} at the top level
    type: str | None = None
    code: str | int | None = None


def _parse_error_envelope(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, code, type) from OpenAI's, Anthropic's, Gemini's or Mistral's error JSON; the raw text when it
    is none of them."""
    try:
        envelope = msgspec.json.decode(body, type=_ErrorEnvelope)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace") or "(empty body)", None, None
    detail = envelope.error
    if not isinstance(detail, _ErrorDetail):
        if envelope.message is not None:
            return envelope.message, str(envelope.code) if envelope.code is not None else None, envelope.type
        return body[:200].decode("utf-8", "replace"), None, None
    code = str(detail.code) if detail.code is not None else None
    return detail.message, code, detail.type
