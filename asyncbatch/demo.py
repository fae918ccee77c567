"""``asyncbatch demo``: a real job through the real engine on the built-in emulator (no key, no network).

It writes a mixed JSONL file (two chat models and an embeddings model), stores it as a job, drives it to
the end while the emulator fails some requests, expires one batch and rejects a few lines for good, and
prints where everything went. The store and results stay in ``--dir`` for you to inspect with the CLI.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import anyio

from .emulator import EmulatorConfig, run_emulator
from .export import write_results
from .manager import BatchManager
from .model import Job
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


async def _show_progress(bm: BatchManager, job_id: str, stop: anyio.Event) -> None:
    interactive = sys.stdout.isatty()
    while not stop.is_set():
        c = (await bm.status(job_id)).counts
        line = (f"  {c.completed:>5} succeeded  {c.failed:>3} failed  {c.in_flight:>5} in flight  "
                f"{c.pending:>4} waiting to be (re)submitted  of {c.total}")
        print(f"\r{line}" if interactive else line, end="" if interactive else "\n", flush=True)
        with anyio.move_on_after(0.5 if interactive else 2.0):
            await stop.wait()
    if interactive:
        print()


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
            print(f"stored {job.counts.total} requests from {input_path} as job {job.id} in {db_path}")
            started = time.monotonic()
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(_show_progress, bm, job.id, stop)
                job = await bm.wait(job.id)
                stop.set()
            elapsed = time.monotonic() - started
            shards = await bm.shards(job.id)
            attempts: Counter[int] = Counter()
            failures: Counter[str] = Counter()
            async for result in bm.results(job.id):
                attempts[result.attempt] += 1
                if not result.ok and result.error is not None:
                    failures[result.error.code] += 1
            count = await write_results(bm, job.id, results_path)
    _summary(job, elapsed, shards_by_status=Counter(s.batch_status.value if s.batch_status else s.phase.value
                                                    for s in shards),
             attempts=attempts, failures=failures, results_path=results_path, count=count, db_path=db_path)
    return 0


def _summary(job: Job, elapsed: float, *, shards_by_status: Counter[str], attempts: Counter[int],
             failures: Counter[str], results_path: Path, count: int, db_path: Path) -> None:
    c = job.counts
    print(f"\njob {job.id} {job.status.value} in {elapsed:.1f}s")
    print(f"  requests: {c.total} total, {c.completed} succeeded, {c.failed} failed, {c.cancelled} cancelled")
    print(f"  provider batches: {sum(shards_by_status.values())} "
          f"({', '.join(f'{n} {s}' for s, n in sorted(shards_by_status.items()))})")
    print("  attempts per request: " + ", ".join(f"{n} needed {a}" for a, n in sorted(attempts.items())))
    if failures:
        print("  final failures: " + ", ".join(f"{n} x {code}" for code, n in failures.most_common()))
    print(f"  results ({count} lines, OpenAI batch output format): {results_path}")
    print(f"  inspect: asyncbatch status {job.id} --db {db_path}")
