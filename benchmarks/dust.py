"""Retry dust: how many small batches a long tail of retryable failures makes, and what it costs the job.

    .venv/bin/python benchmarks/dust.py --n 60000 --per-batch 1000 --fail-rate 0.001 --rounds 3

A job of ``--n`` requests in batches of ``--per-batch`` runs through ``BatchManager`` against an emulator where
``--fail-rate`` of the requests fail with HTTP 500 inside their batch (retryable, drawn again on each attempt).
The first batches end one after another (they are created a few at a time), so their failures come back
spread out: a client that resubmits each batch's failures as soon as they are in makes one small batch per
batch that ended. Reported: batches that carry requests sent again and their sizes, the job's time from
``submit`` returning to its end, and its tail (from the last batch of first attempts ingested to the end).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from harness import API_KEY, WORK, EmulatorProcess, input_file, save, table

from asyncbatch import BatchManager
from asyncbatch.events import ResultsIngested
from asyncbatch.providers import create_provider


async def one_job(url: str, source: Path, workdir: Path, per_batch: int, window: float | None) -> dict[str, Any]:
    provider = create_provider("openai", base_url=url, api_key=API_KEY)
    ingested: dict[int, float] = {}
    options = {} if window is None else {"retry_window": window}  # None: the version's default (earlier ones had none)
    async with BatchManager(workdir / "jobs.db", provider=provider, poll_interval=1.0,
                            max_requests_per_batch=per_batch, **options) as bm:
        job = await bm.submit(source)
        started = time.time()
        async with anyio.create_task_group() as tg, bm.events.subscribe(job.id) as events:

            async def listen() -> None:
                async for event in events:
                    if isinstance(event, ResultsIngested):
                        ingested[event.shard_id] = event.at

            tg.start_soon(listen)
            finished = await bm.wait(job.id)
            ended = time.time()
            tg.cancel_scope.cancel()
    assert finished.counts is not None and finished.counts.completed + finished.counts.failed == finished.counts.total
    with sqlite3.connect(workdir / "jobs.db") as db:  # (members, members sent again) of every batch
        batches = db.execute("SELECT COUNT(*), SUM(attempt > 1) FROM shard_members GROUP BY shard_id").fetchall()
        firsts = [row[0] for row in db.execute("SELECT shard_id FROM shard_members GROUP BY shard_id "
                                               "HAVING MAX(attempt) = 1")]
    with_retries = [size for size, again in batches if again]
    return {
        "batches": len(batches), "batches_with_retries": len(with_retries),
        "retry_batches_of_10_or_fewer": sum(size <= 10 for size in with_retries),
        "retry_batches_of_one": sum(size == 1 for size in with_retries),
        "requests_sent_again": sum(again for _, again in batches),
        "median_batch_with_retries": statistics.median(with_retries) if with_retries else 0,
        "job_s": ended - started, "tail_s": ended - max(ingested[shard] for shard in firsts),
        "failed_for_good": finished.counts.failed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--per-batch", type=int, default=1000)
    parser.add_argument("--fail-rate", type=float, default=0.001)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--retry-window", type=float, help="BatchManager(retry_window=...); default: the default")
    args = parser.parse_args()
    source = input_file("openai", args.n)
    runs: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        workdir = WORK / "dust"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        emu = EmulatorProcess(workdir / "emulator", "--complete-after", "0", "--fail-rate", str(args.fail_rate),
                              "--fail-status", "500", "--seed", str(round_no))
        try:
            runs.append(anyio.run(one_job, emu.openai_base_url, source, workdir, args.per_batch, args.retry_window))
        finally:
            emu.stop()
        print(f"round {round_no + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    rows = [[name, statistics.median(run[name] for run in runs)] for name in runs[0]]
    print(table(rows, [f"n={args.n}, {args.per_batch} a batch, fail rate {args.fail_rate} (medians)", "value"]))
    print(f"raw figures: {save('dust', {'args': vars(args), 'runs': runs})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
