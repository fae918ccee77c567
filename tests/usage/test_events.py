"""Events: watched in the process that runs the job, and from another process through the store; relayed
to a callback and to a signed webhook (verified with the OpenAI SDK's own verifier)."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
from aiohttp import web

from asyncbatch import BatchManager, JobStatus, RequestCounts
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.events import (
    AnyEvent,
    BatchCreated,
    BatchStatusChanged,
    JobFinished,
    RequestsResubmitted,
    ResultsIngested,
)
from asyncbatch.http import RetryPolicy
from asyncbatch.providers.openai import OpenAIProvider
from asyncbatch.webhooks import WebhookSender, relay
from tests.helpers import API_KEY, chat_line

FAST = {"poll_interval": 0.02, "max_poll_interval": 0.1}
SECRET = "whsec_" + base64.b64encode(b"a webhook secret of thirty-two b").decode()


def manager(db: Path, emu: Any) -> BatchManager:
    return BatchManager(db, provider=OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url), **FAST)


@asynccontextmanager
async def emulated(tmp_path: Path, config: EmulatorConfig) -> AsyncIterator[BatchManager]:
    """An emulator and a manager on ``tmp_path/jobs.db`` pointed at it."""
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu, manager(tmp_path / "jobs.db", emu) as bm:
        yield bm


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": API_KEY, **extra}


def check_story(events: list[AnyEvent], requests: int) -> None:
    """One shard that fails once (every request), is resubmitted, and succeeds; each fact told once."""
    kinds = [type(e).__name__ for e in events]
    assert kinds[-1] == "JobFinished" and kinds.count("JobFinished") == 1
    created = [e for e in events if isinstance(e, BatchCreated)]
    assert [(e.attempt, e.request_count) for e in created] == [(1, requests), (2, requests)]
    assert len({e.shard_id for e in created}) == 2
    ingested = [e for e in events if isinstance(e, ResultsIngested)]
    assert [(e.succeeded, e.failed, e.resubmitted) for e in ingested] == [(0, 0, requests), (requests, 0, 0)]
    resubmitted = [e for e in events if isinstance(e, RequestsResubmitted)]
    assert [(e.count, e.attempt) for e in resubmitted] == [(requests, 2)]
    statuses = [(e.shard_id, e.status, tuple(sorted(e.counts.items())))
                for e in events if isinstance(e, BatchStatusChanged)]
    assert len(statuses) == len(set(statuses)) and {s for _, s, _ in statuses} >= {"completed"}
    assert kinds.index("RequestsResubmitted") > kinds.index("ResultsIngested")
    finished = events[-1]
    assert isinstance(finished, JobFinished) and finished.status is JobStatus.DONE
    assert finished.counts.completed == requests


async def test_watch_follows_a_job_run_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with emulated(tmp_path, EmulatorConfig(complete_after=0.2, fail_attempts=1)) as bm:
        job = await bm.submit([chat_line(f"r{i}") for i in range(5)])
        events: list[AnyEvent] = []
        async with await anyio.open_process(
            [sys.executable, "-m", "asyncbatch", "run", job.id, "--db", str(db), "--poll-interval", "0.05",
             "--max-poll-interval", "0.1"], env=cli_env(),
        ) as runner:
            with anyio.fail_after(60):
                async for event in bm.watch(job.id, poll_interval=0.02):
                    events.append(event)
            assert await runner.wait() == 0
    check_story(events, 5)


async def test_in_process_events_come_once_although_the_store_is_read_too(tmp_path: Path) -> None:
    seen: list[AnyEvent] = []
    async with emulated(tmp_path, EmulatorConfig(complete_after=0.1, fail_attempts=1)) as bm:
        job = await bm.submit([chat_line(f"r{i}") for i in range(4)])
        async with anyio.create_task_group() as tg:
            tg.start_soon(bm.wait, job.id)
            with anyio.fail_after(60):
                finished = await relay(bm.watch(job.id, poll_interval=0.005), callback=seen.append)
        late = [e async for e in bm.watch(job.id)]
    check_story(seen, 4)
    assert finished == seen[-1]
    assert [type(e).__name__ for e in late] == ["JobFinished"]  # an ended job: one event, at once


async def test_async_callbacks_are_awaited(tmp_path: Path) -> None:
    got: list[str] = []

    async def on_event(event: AnyEvent) -> None:
        await anyio.lowlevel.checkpoint()
        got.append(type(event).__name__)

    async with emulated(tmp_path, EmulatorConfig()) as bm:
        job = await bm.submit([chat_line("only")])
        async with anyio.create_task_group() as tg:
            tg.start_soon(bm.wait, job.id)
            await relay(bm.watch(job.id, poll_interval=0.01), callback=on_event)
    assert got[0] == "BatchCreated" and got[-1] == "JobFinished"


@asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver on loopback that records headers and bodies (and answers ``status`` first)."""
    received: list[tuple[dict[str, str], bytes]] = []
    answers = [status]

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=answers.pop() if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


async def test_cli_watch_prints_events_and_posts_signed_webhooks(tmp_path: Path) -> None:
    import openai

    db = tmp_path / "jobs.db"
    async with receiver(status=503) as (url, received), run_emulator(
        EmulatorConfig(complete_after=1.5), data_dir=tmp_path / "emu"
    ) as emu, manager(db, emu) as bm:
        job = await bm.submit([chat_line(f"r{i}") for i in range(3)])
        async with await anyio.open_process(
            [sys.executable, "-m", "asyncbatch", "watch", job.id, "--db", str(db), "--events", "--interval",
             "0.05", "--webhook", url, "--webhook-events", "JobFinished", "--webhook-secret-env", "HOOK_SECRET"],
            env=cli_env(HOOK_SECRET=SECRET),
        ) as watcher:
            with anyio.fail_after(60):
                await bm.wait(job.id)
                assert await watcher.wait() == 0
                assert watcher.stdout is not None
                output = b""
                async for chunk in watcher.stdout:
                    output += chunk
    lines = [json.loads(line) for line in output.decode().splitlines()]
    # the watcher may attach after the batch was created; the results come 1.5 s later, surely seen
    assert "ResultsIngested" in [line["type"] for line in lines] and lines[-1]["type"] == "JobFinished"
    assert lines[-1]["counts"]["completed"] == 3
    assert len(received) == 2  # the 503 was retried with the same webhook-id
    (first_headers, first_body), (headers, body) = received
    assert first_headers["webhook-id"] == headers["webhook-id"] and first_body == body
    client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    client.webhooks.verify_signature(body, headers)  # raises if the signature is wrong
    assert msgspec.json.decode(body)["type"] == "JobFinished"


async def test_webhook_sender_keeps_its_secret(tmp_path: Path) -> None:
    async with receiver(status=500) as (url, received):
        sender = WebhookSender(url, secret=SECRET, retry=RetryPolicy(base_delay=0.01, max_retries=0))
        assert SECRET not in repr(sender)
        event = JobFinished(job_id="j", status=JobStatus.DONE, counts=RequestCounts(total=1))
        try:
            await sender.send(event)
        except Exception as exc:
            assert SECRET not in str(exc) and SECRET not in repr(exc)
        else:
            raise AssertionError("a 500 with no retries left must raise")
        finally:
            await sender.aclose()
    headers, _ = received[0]
    assert SECRET not in json.dumps(headers) and Counter(h.lower() for h in headers)["webhook-signature"] == 1
