"""Webhooks whose receiver is down, failing or refusing: bounded retries, then one clear error that stops the
watch, and never the credentials the receiver's URL carries (user info, a query code, a token in the path)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.errors import WebhookError
from asyncbatch.events import AnyEvent, JobFinished
from asyncbatch.http import RetryPolicy
from asyncbatch.model import JobStatus, RequestCounts
from asyncbatch.providers.openai import OpenAIProvider
from asyncbatch.webhooks import WebhookSender, relay
from tests.helpers import API_KEY, chat_line
from tests.reliability.support import cli, cli_env

SECRETS = ("HOOKPASSWORD", "QUERYCODE", "PATHTOKEN", "SIGNINGSECRET")
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.02, unreachable_tries=4)
FINISHED = JobFinished(job_id="job_1", status=JobStatus.DONE, counts=RequestCounts(total=1, completed=1))


def hook_url(authority: str) -> str:
    return f"http://hook:HOOKPASSWORD@{authority}/services/T0/PATHTOKEN?code=QUERYCODE"


@asynccontextmanager
async def receiver(answer: Callable[[web.Request], web.StreamResponse]) -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(request)
        return answer(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret} shown in {text!r}"


async def events_then_watch_closed(closed: list[bool]) -> AsyncIterator[AnyEvent]:
    try:
        yield FINISHED
    finally:
        closed.append(True)


def dropping(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.mark.parametrize(
    ("answer", "tries", "status"),
    [
        (lambda _: web.Response(status=503), FAST.max_retries + 1, 503),
        (lambda _: web.Response(status=500, text="receiver echoes http://hook:HOOKPASSWORD@x?code=QUERYCODE"),
         FAST.max_retries + 1, 500),
        (dropping, FAST.max_retries + 1, None),
        (lambda _: web.Response(status=401), 1, 401),  # refused: no point asking again
        (lambda _: web.Response(status=410), 1, 410),
    ],
)
async def test_a_failing_receiver_ends_the_relay_with_one_clear_error_after_bounded_tries(
    answer: Callable[[web.Request], web.StreamResponse], tries: int, status: int | None
) -> None:
    async with receiver(answer) as (authority, seen):
        sender = WebhookSender(hook_url(authority), secret="SIGNINGSECRET", retry=FAST)
        closed: list[bool] = []
        with pytest.raises(WebhookError) as info:
            await relay(events_then_watch_closed(closed), webhook=sender)
    assert len(seen) == tries and closed == [True]
    error = info.value
    assert error.status == status
    assert re.match(r"webhook delivery of JobFinished failed: (HTTP \d+: )?POST http://\*\*\*@127\.0\.0\.1:\d+/…: ",
                    str(error)), str(error)
    assert_clean(str(error), repr(error), repr(sender))
    # what the URL carries did reach the receiver: credentials are usable, only never shown
    request = seen[0]
    assert request.path == "/services/T0/PATHTOKEN" and request.query["code"] == "QUERYCODE"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"hook:HOOKPASSWORD").decode()


async def test_a_receiver_that_is_down_is_tried_within_the_bounds() -> None:
    sender = WebhookSender(hook_url("127.0.0.1:9"), retry=FAST)
    with pytest.raises(WebhookError, match=r"ClientConnectorError: .*\(gave up after 4 tries\)") as info:
        await relay(events_then_watch_closed([]), webhook=sender)
    assert_clean(str(info.value))


def test_the_default_delivery_policy_is_bounded() -> None:
    policy = WebhookSender("http://127.0.0.1:9/hook")._http.retry
    assert policy.max_retries <= 10 and policy.max_elapsed <= 120


@pytest.mark.slow  # the default delivery policy's 7 tries take about 22 s
async def test_watch_with_the_receiver_down_prints_one_line_and_stops(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider, poll_interval=0.02) as bm:
            job = await bm.submit([chat_line("a")])
            await bm.wait(job.id)
    done = await cli("watch", job.id, "--db", str(db), "--events", "--webhook", hook_url("127.0.0.1:9"),
                     "--webhook-secret-env", "HOOK_SECRET", env=cli_env(HOOK_SECRET="SIGNINGSECRET"), within=120)
    assert done.code == 1
    (line,) = done.err.strip().splitlines()
    assert line.startswith("asyncbatch: error: webhook delivery of JobFinished failed: POST http://***@127.0.0.1:9/…")
    assert "(gave up after 7 tries)" in line and "Traceback" not in done.err
    assert '"type":"JobFinished"' in done.out  # the event itself was shown before its delivery failed
    assert_clean(done.out, done.err)
