"""One aiohttp session per provider: one retry loop, server wait hints, streaming, redaction.

The retry policy follows the official SDKs (408/409/429/5xx and connection errors are retried, the server's
``x-should-retry`` wins, ``retry-after-ms`` then ``retry-after`` are honoured, in any spelling of the header
name) with more attempts, because a batch client has hours, not seconds; every call is bounded in tries and in
time (:class:`RetryPolicy`). A 429 that says the account is out of quota is not retried. Every wait a server
asked for is logged at INFO. Secrets passed in ``secrets``, and any credential in the base URL, are scrubbed
from every message that leaves this module.
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import logging
import math
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import anyio
import msgspec

from .checks import non_negative, positive, redact_url, url_secrets, whole_number
from .errors import (
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    NotFoundError,
    ProviderError,
    QuotaExceededError,
    RateLimitedError,
    TransientError,
)
from .metrics import HTTP_ERRORS

log = logging.getLogger("asyncbatch.http")

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Told of every wait of this layer that a server asked for or that follows a failed connection, with its
#: length and reason, while the wait begins (the engine notes it on the shard, so a progress line says
#: "waiting: ..." instead of "in flight"). A context variable: set by the task that makes the calls.
WAITING: contextvars.ContextVar[Callable[[float, str], Awaitable[None]] | None] = contextvars.ContextVar(
    "asyncbatch_http_waiting", default=None)
#: Error codes of a 429 that say "out of quota", not "slow down" (OpenAI's ``insufficient_quota``, reference §4.1).
PERMANENT_429_CODES = frozenset({"insufficient_quota"})
CHUNK = 1 << 16
#: What a failed connection raises: it may have happened before or after the server acted on the call.
_CONNECTION_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)

T = TypeVar("T")


class Response(msgspec.Struct, kw_only=True):
    """A complete answer. ``headers`` is aiohttp's case-insensitive mapping (a plain dict works too)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


class RetryPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """How hard to try one HTTP call, bounded in tries and in time.

    Without a hint from the server, waits grow from ``base_delay`` to ``max_delay`` (jittered). A server's hint
    (``Retry-After``, ``retry-after-ms``) is honoured as given, above ``max_delay`` too, up to
    ``max_retry_after``; a longer one gives the call up at once, saying how long the server asked to wait (a
    worker blocked for hours inside one call helps nobody; the caller decides). ``max_elapsed`` bounds the
    whole call: a wait that would end past it is not started. ``max_retries`` bounds the tries after the first.
    """

    max_retries: int = 8
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 300.0
    max_elapsed: float = 900.0
    #: Tries of a call that cannot even connect (nothing listening, no such host): said within seconds, and the
    #: caller (the engine) decides how long to go on, instead of this layer going on for a minute.
    unreachable_tries: int = 3

    def __post_init__(self) -> None:
        whole_number(self.max_retries, "max_retries", minimum=0)
        whole_number(self.unreachable_tries, "unreachable_tries", minimum=1)
        for name in ("base_delay", "max_delay", "max_retry_after"):
            non_negative(getattr(self, name), name)
        positive(self.max_elapsed, "max_elapsed")

    def backoff(self, attempt: int) -> float:
        delay: float = min(self.base_delay * 2**attempt, self.max_delay)
        return delay * (1 - 0.25 * random.random())


def _wait_hint(headers: Mapping[str, str]) -> tuple[float, str] | None:
    """(seconds, header name) from ``retry-after-ms``, else ``retry-after`` (seconds, or an HTTP date), read
    whatever the case of the header names. Unreadable values and NaN are ignored; an infinite one is kept
    (it is too long, and says so)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in ("retry-after-ms", "retry-after"):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / (1000.0 if name == "retry-after-ms" else 1.0)
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                date = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                continue
            seconds = date.timestamp() - time.time()  # a date without a zone is UTC (RFC 9110: always GMT)
        if not math.isnan(seconds):
            return max(seconds, 0.0), name
    return None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), if present, in any case."""
    hint = _wait_hint(headers)
    return hint[0] if hint else None


class _Answered(Exception):
    """An attempt got an error answer (>= 400): its complete response, for the retry decision."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _Wait(msgspec.Struct, frozen=True):
    """A decision to try again after ``seconds``; ``hint`` names the header the server asked it with."""

    seconds: float
    hint: str | None = None


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
        name: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name  # the provider's, for metrics
        self._headers = dict(headers)
        # the longest first, so that a secret holding another is scrubbed whole
        self._secrets = sorted({s for s in (*secrets, *url_secrets(base_url)) if s}, key=len, reverse=True)
        self.retry = retry or RetryPolicy()
        self._limiter = anyio.CapacityLimiter(max_connections)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        # A streamed body is read at the pace of its consumer (ingesting a large results file takes minutes):
        # no limit on the whole, only on each wait for more bytes.
        self._stream_timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=timeout)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never show headers (they hold the key) nor what the URL may carry
        return f"HttpClient({redact_url(self.base_url)!r})"

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

    def _shown(self, path: str) -> str:
        """``path`` as messages show it: a full URL (a webhook's) without what it may carry."""
        return redact_url(path) if path.startswith(("http://", "https://")) else path

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
        body = msgspec.json.encode(json) if json is not None else None
        req_headers = dict(headers or {})
        if body is not None:
            req_headers.setdefault("content-type", "application/json")

        async def attempt() -> Response:
            async with self._limiter:
                data = body if body is not None else form() if form is not None else None
                async with self.session.request(
                    method, self.url(path), params=params, data=data, headers=req_headers
                ) as resp:
                    response = Response(status=resp.status, headers=resp.headers, body=await resp.read())
            if response.status >= 400:
                raise _Answered(response)
            return response

        return await self._with_retries(method, path, attempt, idempotent=idempotent)

    async def lines(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """The non-blank lines of a response body with their 1-based numbers (as ``jsonl.iter_lines`` gives a
        file's), as they arrive (see ``blocks``)."""
        blocks = self.blocks(path, headers=headers)
        async with contextlib.aclosing(blocks):
            async for first, block in blocks:
                for number, line in enumerate(block.split(b"\n"), first):
                    if line.strip():
                        yield number, line

    async def blocks(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """A response body as it arrives, in blocks of whole lines, each with the 1-based number of its first
        line: nothing is written to disk, the caller's work overlaps the transfer, and a caller that decodes
        lines many at a time (``Decoder.decode_lines``) makes one call per block, not one per line. A block holds
        no final newline; it may hold blank lines.

        A body that breaks or ends short raises ``ConnectionFailedError`` (retryable) after the lines that
        did arrive whole; a cut last line is never yielded. Whatever the caller did with the lines must
        therefore be safe to do again when it starts over. Close it in the task that iterates it
        (``contextlib.aclosing``): it holds a response and one of the client's connection slots.
        """
        async with contextlib.AsyncExitStack() as stack:
            resp = await self._open_body(stack, path, headers)
            size, number = 0, 1
            partial: list[bytes] = []  # pieces of a line that has not ended yet (a long line is joined once)
            try:
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        partial.append(chunk)
                        continue
                    block = b"".join((*partial, chunk[:end])) if partial else chunk[:end]
                    partial = [chunk[end + 1:]]
                    yield number, block
                    number += block.count(b"\n") + 1
            except _CONNECTION_ERRORS as exc:
                raise ConnectionFailedError(self.redact(f"GET {self._shown(path)}: {_describe(exc)}")) from None
            expected = resp.content_length
            if expected is not None and size != expected:
                raise ConnectionFailedError(f"GET {self._shown(path)}: body cut at {size} of {expected} bytes")
            if (last := b"".join(partial)).strip():
                yield number, last

    async def first_line(self, path: str, *, headers: Mapping[str, str] | None = None) -> bytes | None:
        """The first non-blank line of a body (None when it has none), reading no further than that line:
        with the retries and the connection limit of every other call."""
        lines = self.lines(path, headers=headers)
        async with contextlib.aclosing(lines):
            async for _, line in lines:
                return line
        return None

    async def _open_body(
        self, stack: contextlib.AsyncExitStack, path: str, headers: Mapping[str, str] | None
    ) -> aiohttp.ClientResponse:
        """A successful GET whose body is still to be read, holding a connection slot (both released with
        ``stack``). Error answers and failed connections are retried as for ``request``; nothing of a body
        has been handed out before that."""

        async def attempt() -> aiohttp.ClientResponse:
            async with contextlib.AsyncExitStack() as this_try:
                await this_try.enter_async_context(self._limiter)
                resp = await this_try.enter_async_context(
                    self.session.get(self.url(path), headers=headers, timeout=self._stream_timeout)
                )
                if resp.status >= 400:
                    raise _Answered(Response(status=resp.status, headers=resp.headers, body=await resp.read()))
                stack.push_async_exit(this_try.pop_all())  # the caller's now: released when it is done
                return resp

        return await self._with_retries("GET", path, attempt, idempotent=True)

    async def _with_retries(
        self, method: str, path: str, attempt: Callable[[], Awaitable[T]], *, idempotent: bool
    ) -> T:
        """Run ``attempt`` until it succeeds, the failure is final, or the policy's bounds are reached."""
        policy = self.retry
        deadline = time.monotonic() + policy.max_elapsed
        tries = 0
        while True:
            tries += 1
            failure: Response | str  # the error answer, or what went wrong with the connection
            try:
                done = await attempt()
                if log.isEnabledFor(logging.DEBUG):  # -vv: every call, its path shown as redacted as errors show it
                    log.debug("%s %s: answered%s", method, self._shown(path), f" (try {tries})" if tries > 1 else "")
                return done
            except _Answered as answered:
                failure = answered.response
                HTTP_ERRORS.labels(self.name, str(failure.status)).inc()
                plan = self._plan(failure, tries - 1, idempotent)
                if isinstance(plan, str):
                    raise self.error_for(method, path, failure, detail=plan) from None
                why = f"HTTP {failure.status}"
            except _CONNECTION_ERRORS as exc:
                HTTP_ERRORS.labels(self.name, "connection").inc()
                reached = not isinstance(exc, aiohttp.ClientConnectorError)  # no connection could be made at all
                if reached:
                    failure = f"{method} {self._shown(path)}: {_describe(exc)}"
                else:
                    where = redact_url(self.base_url)  # scheme, host and port: what cannot be reached
                    failure = f"{method} {self._shown(path)}: cannot reach {where}: {_describe(exc)}"
                if not idempotent and reached:
                    raise ConnectionFailedError(self.redact(failure)) from None
                if not reached and tries >= policy.unreachable_tries:
                    raise ConnectionFailedError(self.redact(f"{failure} (gave up after {tries} tries)"),
                                                reached=False) from None
                plan = _Wait(policy.backoff(tries - 1))
                why = type(exc).__name__
            if tries > policy.max_retries:
                raise self._failed(method, path, failure, f" (gave up after {tries} tries)") from None
            if time.monotonic() + plan.seconds > deadline:
                asked = f"the server asked to wait {plan.seconds:g}s ({plan.hint} header); " if plan.hint else ""
                raise self._failed(method, path, failure, f" (gave up after {tries} tries: {asked}waiting longer "
                                   f"would pass RetryPolicy.max_elapsed={policy.max_elapsed:g}s)") from None
            if plan.hint:
                log.info("%s %s: %s; waiting %.1fs as the server asked (%s header), then try %d of at most %d",
                         method, self._shown(path), why, plan.seconds, plan.hint, tries + 1, policy.max_retries + 1)
            else:
                log.debug("%s %s: %s; trying again in %.2fs", method, self._shown(path), why, plan.seconds)
            told = WAITING.get()
            if told is not None and (plan.hint or plan.seconds >= 1.0):
                await told(plan.seconds, f"{why}{f' ({plan.hint})' if plan.hint else ''}")
            await anyio.sleep(plan.seconds)

    def _failed(self, method: str, path: str, failure: Response | str, detail: str) -> ProviderError:
        """The error a call ends with when it is given up: ``detail`` says why."""
        if isinstance(failure, Response):
            return self.error_for(method, path, failure, detail=detail)
        return ConnectionFailedError(self.redact(failure + detail))

    def _plan(self, response: Response, attempt: int, idempotent: bool) -> _Wait | str:
        """When to try an answered call again, or (a string) why not: empty when the answer is simply final."""
        policy = self.retry
        should = _header(response.headers, "x-should-retry")
        if should == "false":
            return ""
        if response.status == 429:
            _, code, etype = _parse_error_envelope(response.body)
            if code in PERMANENT_429_CODES or etype in PERMANENT_429_CODES:
                return " (not retried: the account is out of quota; waiting does not help)"
        elif should != "true" and response.status not in RETRYABLE_STATUS:
            return ""
        if not idempotent and response.status != 429:
            return ""  # the call may have done its work: the caller looks before trying again
        hint = _wait_hint(response.headers)
        if hint is None or hint[0] == 0:
            return _Wait(policy.backoff(attempt))
        seconds, header = hint
        if seconds > policy.max_retry_after:
            return (f" (not retried: the server asked to wait {seconds:g}s ({header} header), longer than "
                    f"RetryPolicy.max_retry_after={policy.max_retry_after:g}s)")
        return _Wait(seconds, header)

    # --- errors ------------------------------------------------------------------------------------------

    def error_for(self, method: str, path: str, response: Response, *, detail: str = "") -> ProviderError:
        """Build the typed error for a >= 400 response from the provider's error envelope; ``detail`` is added
        to its message (why it was not retried)."""
        message, code, etype = _parse_error_envelope(response.body)
        request_id = _header(response.headers, "x-request-id") or _header(response.headers, "request-id")
        text = self.redact(f"{method} {self._shown(path)}: {message}{detail}")
        status = response.status
        # every string the provider sent back is scrubbed: a server (or proxy) may echo what it was sent
        code, etype, request_id = (self.redact(v) if v is not None else None for v in (code, etype, request_id))
        kwargs: dict[str, Any] = {"status": status, "code": code, "type": etype, "request_id": request_id}
        if status == 429:
            if code in PERMANENT_429_CODES or etype in PERMANENT_429_CODES:
                return QuotaExceededError(text, **kwargs)
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever the case of its name (aiohttp's mapping ignores case already; a dict does not)."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _describe(exc: BaseException) -> str:
    """A connection failure in words (``str`` of a timeout is empty; ``repr`` of aiohttp's errors is noisy)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
