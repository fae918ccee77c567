"""The HTTP layer's one retry loop against a real aiohttp server that answers as OpenAI's and Anthropic's do.

Wait hints are sent in the spellings real servers use (OpenAI's ``Retry-After``/``retry-after`` seconds,
``retry-after-ms``, Anthropic's ``retry-after`` on 429 and 529, an HTTP date) with small values; what is
checked is what the client did: how many calls the server saw, how far apart, what was logged and raised.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from aiohttp import web

from asyncbatch.errors import (
    BadRequestError,
    ConnectionFailedError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    TransientError,
    ValidationError,
)
from asyncbatch.http import HttpClient, RetryPolicy, parse_retry_after

FAST = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.02)
OPENAI_RATE_LIMIT = {"error": {"message": "Rate limit reached for requests", "type": "requests",
                               "param": None, "code": "rate_limit_exceeded"}}
OPENAI_QUOTA = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                          "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
ANTHROPIC_OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
                        "request_id": "req_011"}
ANTHROPIC_RATE_LIMIT = {"type": "error", "error": {"type": "rate_limit_error", "message": "Rate limited"}}


class Script:
    """What the server answers, in order (the last answer repeats), and when each call arrived."""

    def __init__(self, *answers: tuple[int, Mapping[str, str], Any]) -> None:
        self.answers = list(answers)
        self.arrivals: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.arrivals)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


@asynccontextmanager
async def server(script: Script) -> AsyncIterator[HttpClient]:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        script.arrivals.append(time.monotonic())
        status, headers, body = script.answers[min(script.calls, len(script.answers)) - 1]
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        # aiohttp sends header names exactly as given: the spelling under test reaches the client as written
        return web.Response(status=status, headers=dict(headers), body=data, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = HttpClient(f"http://127.0.0.1:{runner.addresses[0][1]}", headers={}, retry=FAST)
    try:
        yield client
    finally:
        await client.aclose()
        await runner.cleanup()


OK = (200, {}, {"id": "batch_1"})


def http_date(seconds_ahead: float) -> str:
    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "body", "header"),
    [
        (429, {"Retry-After": "0.3"}, OPENAI_RATE_LIMIT, "retry-after"),  # OpenAI's "Retry-After: 20", scaled
        (429, {"retry-after": "0.3"}, ANTHROPIC_RATE_LIMIT, "retry-after"),  # Anthropic's spelling
        (429, {"RETRY-AFTER": "0.3"}, OPENAI_RATE_LIMIT, "retry-after"),
        (429, {"retry-after-ms": "300", "retry-after": "1"}, OPENAI_RATE_LIMIT, "retry-after-ms"),  # ms wins
        (429, {"Retry-After-Ms": "300"}, OPENAI_RATE_LIMIT, "retry-after-ms"),
        (529, {"retry-after": "0.3"}, ANTHROPIC_OVERLOADED, "retry-after"),
        (503, {"Retry-After": "0.3"}, b"Service Unavailable", "retry-after"),  # a proxy's plain-text page
    ],
)
async def test_a_wait_hint_is_honoured_in_any_spelling_and_logged(
    status: int, headers: dict[str, str], body: Any, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="asyncbatch.http")
    script = Script((status, headers, body), OK)
    async with server(script) as client:
        response = await client.request("GET", "/v1/batches/batch_1")
    assert response.status == 200 and script.calls == 2
    assert script.gaps()[0] >= 0.3  # backoff alone would have waited 0.01-0.02 s
    (record,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert f"HTTP {status}; waiting 0.3s as the server asked ({header} header)" in record.getMessage()


async def test_a_hint_given_as_an_http_date_is_honoured() -> None:
    script = Script((429, {"Retry-After": http_date(1.5)}, OPENAI_RATE_LIMIT), OK)
    async with server(script) as client:
        await client.request("GET", "/v1/batches")
    # the date has whole seconds: the wait is what is left of 1.5 s, rounded down to the second, at least 0.5
    assert script.calls == 2 and script.gaps()[0] >= 0.4


@pytest.mark.parametrize(
    "headers",
    [
        lambda: {"Retry-After": "3600"},
        lambda: {"retry-after-ms": "3600000"},
        lambda: {"Retry-After": http_date(3600)},  # made when the test runs, not when it is collected
        lambda: {"retry-after": "inf"},
    ],
)
async def test_a_hint_above_the_bound_gives_the_call_up_saying_how_long_the_server_asked(
    headers: Callable[[], dict[str, str]],
) -> None:
    script = Script((429, headers(), OPENAI_RATE_LIMIT), OK)
    async with server(script) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.request("GET", "/v1/batches")
    assert script.calls == 1
    error = info.value
    assert error.retryable and error.retry_after is not None and error.retry_after > 3500
    assert "the server asked to wait" in str(error) and "RetryPolicy.max_retry_after=300s" in str(error)


async def test_the_bound_on_hints_is_configurable() -> None:
    script = Script((429, {"Retry-After": "0.3"}, OPENAI_RATE_LIMIT), OK)
    async with server(script) as client:
        client.retry = RetryPolicy(base_delay=0.01, max_retry_after=0.2)
        with pytest.raises(RateLimitedError, match=r"asked to wait 0.3s \(retry-after header\), longer than"):
            await client.request("GET", "/v1/batches")
        client.retry = RetryPolicy(base_delay=0.01, max_retry_after=1.0)
        assert (await client.request("GET", "/v1/batches")).status == 200


@pytest.mark.parametrize("extra", [{}, {"Retry-After": "0.1"}, {"x-should-retry": "true"}])
async def test_insufficient_quota_is_not_retried(extra: dict[str, str]) -> None:
    """OpenAI's 429 ``insufficient_quota`` is billing, not pacing: waiting does not help, so one call only."""
    script = Script((429, extra, OPENAI_QUOTA))
    async with server(script) as client:
        for idempotent in (True, False):
            with pytest.raises(QuotaExceededError) as info:
                await client.request("POST", "/v1/batches", json={}, idempotent=idempotent)
            assert not info.value.retryable and info.value.status == 429 and info.value.code == "insufficient_quota"
            assert "out of quota" in str(info.value)
    assert script.calls == 2  # one per call


async def test_a_plain_rate_limit_is_retried_also_for_a_create() -> None:
    """A 429 surely did nothing, so even a call that must not be repeated blindly (a create) is retried."""
    script = Script((429, {"retry-after-ms": "50"}, OPENAI_RATE_LIMIT), OK)
    async with server(script) as client:
        assert (await client.request("POST", "/v1/batches", json={}, idempotent=False)).status == 200
    assert script.calls == 2


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_a_create_is_not_retried_after_an_ambiguous_answer(status: int) -> None:
    script = Script((status, {"Retry-After": "0.01"}, ANTHROPIC_OVERLOADED), OK)
    async with server(script) as client:
        with pytest.raises(TransientError):
            await client.request("POST", "/v1/messages/batches", json={}, idempotent=False)
    assert script.calls == 1


@pytest.mark.parametrize(
    ("status", "should", "calls", "error"),
    [
        (429, "false", 1, RateLimitedError),  # the server says no: obeyed in any spelling
        (500, "FALSE", 1, TransientError),  # not "false": ignored, the 500 is retried
        (400, "true", 2, None),  # the server says yes: a 400 is retried
        (400, None, 1, BadRequestError),
        (404, None, 1, NotFoundError),
    ],
)
async def test_x_should_retry_wins(status: int, should: str | None, calls: int, error: type[Exception] | None) -> None:
    headers = {"X-Should-Retry": should} if should else {}
    script = Script((status, headers, OPENAI_RATE_LIMIT), *([OK] if error is None else []))
    async with server(script) as client:
        if error is None:
            await client.request("GET", "/v1/batches")
        else:
            with pytest.raises(error):
                await client.request("GET", "/v1/batches")
    assert script.calls == (calls if should != "FALSE" else FAST.max_retries + 1)


async def test_tries_are_bounded_and_the_error_says_so() -> None:
    script = Script((500, {}, {"error": {"message": "boom", "type": "server_error"}}))
    async with server(script) as client:
        client.retry = RetryPolicy(max_retries=2, base_delay=0.01)
        with pytest.raises(TransientError, match=r"boom \(gave up after 3 tries\)"):
            await client.request("GET", "/v1/batches")
    assert script.calls == 3


async def test_time_is_bounded_even_when_each_hint_is_allowed() -> None:
    script = Script((429, {"Retry-After": "0.3"}, OPENAI_RATE_LIMIT))
    async with server(script) as client:
        client.retry = RetryPolicy(max_retries=50, max_elapsed=0.5)
        with pytest.raises(RateLimitedError) as info:
            await client.request("GET", "/v1/batches")
    assert script.calls == 2  # 0.3 s fits in 0.5 s once, not twice
    assert "waiting longer would pass RetryPolicy.max_elapsed=0.5s" in str(info.value)


@pytest.mark.parametrize("value", ["soon", "nan", "", "-5"])
async def test_unusable_hints_fall_back_to_backoff(value: str) -> None:
    script = Script((429, {"Retry-After": value}, OPENAI_RATE_LIMIT), OK)
    async with server(script) as client:
        assert (await client.request("GET", "/v1/batches")).status == 200
    assert script.calls == 2 and script.gaps()[0] < 0.25


def test_parse_retry_after_reads_any_mapping_in_any_case() -> None:
    assert parse_retry_after({"Retry-After": "20"}) == 20.0
    assert parse_retry_after({"RETRY-AFTER-MS": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "nan"}) is None
    assert parse_retry_after({"x-ratelimit-reset-requests": "6m0s"}) is None
    assert 3590 < (parse_retry_after({"Retry-After": http_date(3600)}) or 0) <= 3600


def test_a_retry_policy_with_impossible_bounds_is_refused() -> None:
    for bad in ({"max_retries": -1}, {"base_delay": -0.1}, {"max_elapsed": 0}, {"max_retry_after": float("nan")}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            RetryPolicy(**bad)


async def test_streamed_bodies_and_first_lines_go_through_the_same_retries() -> None:
    body = b'{"custom_id":"a"}\n{"custom_id":"b"}\n'
    script = Script((429, {"retry-after": "0.05"}, ANTHROPIC_RATE_LIMIT), (503, {}, ANTHROPIC_OVERLOADED),
                    (200, {}, body))
    async with server(script) as client:
        assert await client.first_line("/v1/messages/batches/b/results") == b'{"custom_id":"a"}'
        assert [line async for _, line in client.lines("/v1/messages/batches/b/results")] == body.split()
    assert script.calls == 4


async def test_first_line_of_an_empty_body_and_of_a_missing_one() -> None:
    script = Script((200, {}, b"\n\n"))
    async with server(script) as client:
        assert await client.first_line("/results") is None
        script.answers = [(404, {}, {"type": "error", "error": {"type": "not_found_error", "message": "gone"}})]
        with pytest.raises(NotFoundError):
            await client.first_line("/results")


async def test_a_refused_connection_is_retried_within_the_bounds_and_named_plainly() -> None:
    client = HttpClient("http://127.0.0.1:9", headers={}, retry=RetryPolicy(max_retries=2, base_delay=0.01))
    try:
        with pytest.raises(ConnectionFailedError) as info:
            await client.request("POST", "/v1/batches", json={}, idempotent=False)  # refused: surely nothing made
    finally:
        await client.aclose()
    assert "ClientConnectorError" in str(info.value) and "(gave up after 3 tries)" in str(info.value)


async def test_nothing_listening_is_given_up_after_a_few_tries_whatever_max_retries_allows() -> None:
    """A call that cannot connect at all is said within seconds (the engine decides how long to go on), where a
    dropped connection to a live server is retried to ``max_retries``."""
    client = HttpClient("http://127.0.0.1:9/v1", headers={}, retry=RetryPolicy(max_retries=8, base_delay=0.01))
    try:
        with pytest.raises(ConnectionFailedError) as info:
            await client.request("GET", "/batches")
    finally:
        await client.aclose()
    assert info.value.reached is False and info.value.retryable
    assert "GET /batches: cannot reach http://127.0.0.1:9/…" in str(info.value)
    assert "(gave up after 3 tries)" in str(info.value)
