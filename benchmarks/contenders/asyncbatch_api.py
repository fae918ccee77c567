"""Contender (a)/(e): asyncbatch through its Python API, from a JSONL file to every result read back.

    python benchmarks/contenders/asyncbatch_api.py --provider openai --base-url URL --input F --workdir D

Prints one JSON line: results that succeeded and the seconds spent in submit, run and reading the results;
with ``--ingest-timing`` also the seconds from "batch ended" to "its results are committed", taken from the
manager's own events.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anyio

from asyncbatch import BatchManager
from asyncbatch.events import BatchStatusChanged, ResultsIngested
from asyncbatch.providers import create_provider


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    provider = create_provider(args.provider, base_url=args.base_url)
    ok = 0
    ended: dict[int, float] = {}
    ingest = 0.0
    options = {"ingest_chunk": args.ingest_chunk} if args.ingest_chunk else {}
    async with BatchManager(Path(args.workdir) / "jobs.db", provider=provider, poll_interval=1.0, **options) as bm:
        job = await bm.submit(args.input)
        submitted = time.perf_counter()
        async with anyio.create_task_group() as tg, bm.events.subscribe(job.id) as events:
            if args.ingest_timing:

                async def timing() -> None:
                    nonlocal ingest
                    async for event in events:
                        if isinstance(event, BatchStatusChanged) and event.status.is_terminal:
                            ended[event.shard_id] = time.perf_counter()
                        elif isinstance(event, ResultsIngested):
                            ingest += time.perf_counter() - ended.pop(event.shard_id)

                tg.start_soon(timing)
            await bm.wait(job.id)
            tg.cancel_scope.cancel()
        ran = time.perf_counter()
        async for result in bm.results(job.id):
            ok += result.ok
    done = time.perf_counter()
    print(json.dumps({"ok": ok, "inner": done - started, "submit": submitted - started, "run": ran - submitted,
                      "results": done - ran, "ingest": ingest}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", default="openai")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--ingest-timing", action="store_true")
    parser.add_argument("--ingest-chunk", type=int, help="results per transaction (default: the manager's)")
    anyio.run(main, parser.parse_args())
