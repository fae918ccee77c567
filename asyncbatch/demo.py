"""``asyncbatch demo``: a short, honest tour on the built-in emulator (no key, no network).

It writes a mixed JSONL file (chat completions on two models plus embeddings), stores it as one job and
drives it with the real engine while the emulator fails a few requests (retryable 500s), expires one
provider batch half-way and rejects a few lines for good (400s). You see the live progress (on a terminal),
then a dozen lines: how the job was sent, what failed and was resubmitted, the outcome, the cost against the
same requests sent live, a result, and the command line to inspect it all in ``--dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import anyio

from .cost import CostReport, job_cost
from .emulator import EmulatorConfig, run_emulator
from .events import AnyEvent, BatchCreated, BatchStatusChanged, RequestsResubmitted
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


async def run_demo(directory: Path, *, requests: int = 1200) -> int:
    """Run the tour and tell it in a dozen lines: what was sent, what went wrong and was retried, what it
    cost, where everything is, and the command line to look at it with."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    input_path, db_path, results_path = directory / "input.jsonl", directory / "jobs.db", directory / "results.jsonl"
    write_demo_input(input_path, requests)
    config = EmulatorConfig(complete_after=1.0, fail_rate=0.04, expire_batches=[2], seed=7)
    async with run_emulator(config, data_dir=directory / "emulator") as emu:
        print(f"asyncbatch demo: a real job on the built-in emulator of the OpenAI batch API ({emu.openai_base_url}),"
              " no key, no network")
        provider = OpenAIProvider(api_key=DEMO_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db_path, provider=provider, poll_interval=0.2, max_poll_interval=1.0,
                                max_requests_per_batch=400) as bm:
            job = await bm.submit(input_path, metadata={"demo": "asyncbatch"}, max_attempts=3)
            print(f"  stored {job.counts.total} requests (chat on 2 models + embeddings) as job {job.id}; "
                  "nothing is sent before they are")
            events: list[AnyEvent] = []
            started = time.monotonic()
            display = auto_display(sys.stderr)
            async with anyio.create_task_group() as tg:
                done = anyio.Event()
                if display is not None:
                    tg.start_soon(lambda: follow(bm.store, [job.id], display, interval=0.3, stop=done))
                tg.start_soon(_record, bm, job.id, events)
                job = await bm.wait(job.id)
                done.set()
            elapsed = time.monotonic() - started
            results = [r async for r in bm.results(job.id)]
            count = await write_results(bm, job.id, results_path, fmt="openai")
            report = await job_cost(bm.store, job.id)
    for line in _story(job, events, results, report, elapsed):
        print(f"  {line}")
    print(f"  results ({count} lines, OpenAI batch output format): {results_path}")
    print(f"  e.g. {_example(results)}")
    print(f"everything is in {directory}/; look at it with the command line (also cost, results, watch, --help):")
    print(f"  {_cli()} status {job.id} --db {db_path}")
    return 0


async def _record(bm: BatchManager, job_id: str, events: list[AnyEvent]) -> None:
    async for event in bm.watch(job_id, poll_interval=0.3):
        events.append(event)


def _story(job: Job, events: list[AnyEvent], results: list[Result], report: CostReport, elapsed: float) -> list[str]:
    """What happened, told from the events and the results instead of one line per batch and event."""
    first = [e for e in events if isinstance(e, BatchCreated) and e.attempt == 1]
    expired = sum(1 for e in events if isinstance(e, BatchStatusChanged) and e.status.value == "expired")
    resubmitted = sum(e.count for e in events if isinstance(e, RequestsResubmitted))
    attempts = Counter(r.attempt for r in results)
    failures = Counter(r.error.code for r in results if not r.ok and r.error is not None)
    c = job.counts
    lines = [
        f"sent as {len(first)} provider batches (one per model and endpoint, at most 400 requests each)",
        f"the emulator failed some requests (HTTP 500) and expired {expired} batch{'es' if expired != 1 else ''} "
        f"half-way: {resubmitted} requests resubmitted automatically "
        f"({', '.join(f'{n} needed {a} attempts' for a, n in sorted(attempts.items()) if a > 1) or 'none needed'})",
        f"job {c.completed + c.failed + c.cancelled}/{c.total} {job.status.value} in {elapsed:.1f}s: "
        f"{c.completed} succeeded, {c.failed} failed for good"
        + (f" ({', '.join(f'{n} x {code}' for code, n in failures.most_common())}: the request itself is wrong, "
           "so it is not retried)" if failures else ""),
    ]
    if report.live_cost:
        lines.append(f"cost ${report.batch_cost:.4f} at batch prices instead of ${report.live_cost:.4f} live: "
                     f"saved {report.savings / report.live_cost:.0%} (prices: {report.prices})")
    return lines


def _example(results: list[Result]) -> str:
    result = next(r for r in results if r.ok and r.text is not None)
    return f"{result.custom_id} (attempt {result.attempt}): {result.text}"


def _cli() -> str:
    """How to run ``asyncbatch`` from here: the script beside this Python (``.venv/bin/asyncbatch`` after
    ``make demo``, which is not on PATH), else ``python -m asyncbatch``."""
    script = Path(sys.executable).parent / "asyncbatch"
    if not script.exists():
        return f"{sys.executable} -m asyncbatch"
    relative = os.path.relpath(script)
    return relative if not relative.startswith("..") else str(script)
