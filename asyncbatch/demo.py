"""``asyncbatch demo``: a short, honest tour on the built-in emulator (no key, no network).

It writes a mixed JSONL file (chat completions on two models plus embeddings), stores it as one job and
drives it with the real engine while the emulator fails a few requests (retryable 500s), expires one
provider batch half-way and rejects a few lines for good (400s). You see the live progress, the events
(batches created, results ingested, failures resubmitted), a few results, and the cost against the same
requests sent live. Everything stays in ``--dir``: inspect it with ``asyncbatch status/watch/cost``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import anyio

from .cost import job_cost
from .emulator import EmulatorConfig, run_emulator
from .events import AnyEvent, BatchCreated, BatchStatusChanged, RequestsResubmitted, ResultsIngested
from .export import write_results
from .manager import BatchManager
from .model import Job, Result
from .progress import auto_display, follow
from .providers.openai import OpenAIProvider

DEMO_KEY = "sk-emulator-demo"
TOPICS = ("a product review", "a support ticket", "a news headline", "a restaurant menu", "a commit message")


def write_demo_input(path: Path, count: int) -> None:
    """Mixed requests: most on one chat model, some on another, some embeddings; a few marked to fail."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            topic = TOPICS[i % len(TOPICS)]
            if i % 10 == 9:
                line = {"custom_id": f"embed-{i:05d}", "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": "text-embedding-3-small", "input": f"{topic} number {i}"}}
            else:
                model = "gpt-5.4-nano" if i % 10 == 8 else "gpt-5.4-mini"
                text = f"Summarise {topic} number {i} in five words."
                if i % 250 == 17:
                    text += " [[fail:400]]"  # the emulator answers 400 for these: a permanent failure
                line = {"custom_id": f"chat-{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": model, "messages": [{"role": "user", "content": text}],
                                 "max_completion_tokens": 20}}
            out.write(json.dumps(line) + "\n")


def describe(event: AnyEvent) -> str | None:
    """One line of the tour for the events worth telling (status ticks are left to the progress display)."""
    if isinstance(event, BatchCreated):
        return f"batch {event.batch_id} created: {event.request_count} requests, attempt {event.attempt}"
    if isinstance(event, BatchStatusChanged) and event.status.is_terminal:
        return f"batch {event.batch_id} ended {event.status.value}"
    if isinstance(event, ResultsIngested):
        return (f"batch {event.batch_id} results stored: {event.succeeded} succeeded, {event.failed} failed for "
                f"good, {event.resubmitted} to resubmit")
    if isinstance(event, RequestsResubmitted):
        return f"{event.count} requests resubmitted in a new batch (attempt {event.attempt})"
    return None


async def run_demo(directory: Path, *, requests: int = 1200) -> int:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    input_path, db_path, results_path = directory / "input.jsonl", directory / "jobs.db", directory / "results.jsonl"
    write_demo_input(input_path, requests)
    config = EmulatorConfig(complete_after=1.0, fail_rate=0.04, expire_batches=[2], seed=7)
    async with run_emulator(config, data_dir=directory / "emulator") as emu:
        print(f"emulator of the OpenAI batch API listening at {emu.openai_base_url}")
        provider = OpenAIProvider(api_key=DEMO_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db_path, provider=provider, poll_interval=0.2, max_poll_interval=1.0,
                                max_requests_per_batch=400) as bm:
            job = await bm.submit(input_path, metadata={"demo": "asyncbatch"}, max_attempts=3)
            print(f"stored {job.counts.total} requests (chat on 2 models + embeddings) from {input_path} "
                  f"as job {job.id}\n")
            story: list[str] = []
            started = time.monotonic()
            display = auto_display(sys.stderr)
            async with anyio.create_task_group() as tg:
                done = anyio.Event()
                if display is not None:
                    tg.start_soon(lambda: follow(bm.store, [job.id], display, interval=0.3, stop=done))
                tg.start_soon(_tell, bm, job.id, story)
                job = await bm.wait(job.id)
                done.set()
            elapsed = time.monotonic() - started
            print("what happened:")
            print("\n".join(f"  {line}" for line in story))
            results = [r async for r in bm.results(job.id)]
            count = await write_results(bm, job.id, results_path, fmt="openai")
            report = await job_cost(bm.store, job.id)
    _summary(job, elapsed, results, results_path=results_path, count=count, db_path=db_path)
    print()
    print(report.summary())
    return 0


async def _tell(bm: BatchManager, job_id: str, story: list[str]) -> None:
    async for event in bm.watch(job_id, poll_interval=0.3):
        line = describe(event)
        if line is not None:
            story.append(line)


def _summary(job: Job, elapsed: float, results: list[Result], *, results_path: Path, count: int,
             db_path: Path) -> None:
    c = job.counts
    attempts = Counter(r.attempt for r in results)
    failures = Counter(r.error.code for r in results if not r.ok and r.error is not None)
    print(f"\njob {job.id} {job.status.value} in {elapsed:.1f}s")
    print(f"  requests: {c.total} total, {c.completed} succeeded, {c.failed} failed, {c.cancelled} cancelled")
    print("  attempts per request: " + ", ".join(f"{n} needed {a}" for a, n in sorted(attempts.items())))
    if failures:
        print("  final failures (not retried: the request itself is wrong): "
              + ", ".join(f"{n} x {code}" for code, n in failures.most_common()))
    for result in [r for r in results if r.ok][:3]:
        shown = result.text if result.text is not None else f"{len(result.body['data'][0]['embedding'])}-d embedding"
        print(f"  {result.custom_id} (attempt {result.attempt}): {shown}")
    print(f"  results ({count} lines, OpenAI batch output format): {results_path}")
    print(f"  inspect: asyncbatch status {job.id} --db {db_path}   |   asyncbatch cost {job.id} --db {db_path}")
