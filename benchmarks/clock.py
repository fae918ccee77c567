"""Time to the provider's clock: how soon the batches of a big job exist at the provider.

    .venv/bin/python benchmarks/clock.py --n 1000000 --rounds 3

A job of ``--n`` requests is submitted through ``BatchManager`` (OpenAI, 50,000 requests a batch) and run
against an emulator whose batches do not end; measured from ``submit`` returning to the first and to the last
provider batch created (the ``BatchCreated`` events' clock), then the run is stopped. A provider batch's
queue time starts at its create, so every second before it is a second added to the job.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from harness import API_KEY, WORK, EmulatorProcess, input_file, save, table

from asyncbatch import BatchManager
from asyncbatch.events import BatchCreated
from asyncbatch.providers import create_provider

PER_BATCH = 50_000


async def one_job(url: str, source: Path, workdir: Path, n: int) -> dict[str, Any]:
    provider = create_provider("openai", base_url=url, api_key=API_KEY)
    created: list[float] = []
    expected = math.ceil(n / PER_BATCH)
    async with BatchManager(workdir / "jobs.db", provider=provider, poll_interval=1.0) as bm:
        started = time.time()
        job = await bm.submit(source)
        submitted = time.time()
        async with bm.events.subscribe(job.id) as events, anyio.create_task_group() as tg:
            tg.start_soon(bm.wait, job.id)
            async for event in events:
                if isinstance(event, BatchCreated):
                    created.append(event.at)
                    if len(created) == expected:
                        tg.cancel_scope.cancel()
                        break
    return {"submit_s": submitted - started, "first_created_s": min(created) - submitted,
            "last_created_s": max(created) - submitted, "batches": len(created)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = input_file("openai", args.n)
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        workdir = WORK / "clock"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        emu = EmulatorProcess(workdir / "emulator", "--complete-after", "86400")
        try:
            runs.append(anyio.run(one_job, emu.openai_base_url, source, workdir, args.n))
        finally:
            emu.stop()
        print(f"{runs[-1]}", file=sys.stderr, flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [[name, statistics.median(run[name] for run in runs)] for name in runs[0]]
    print(table(rows, [f"n={args.n} (medians of {args.rounds})", "value"]))
    print(f"raw figures: {save('clock', {'args': vars(args), 'runs': runs})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
