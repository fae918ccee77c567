"""Contender (e): a plain script with the official ``anthropic`` SDK (AsyncAnthropic).

Read the native ``{custom_id, params}`` lines, create batches of at most 100,000 requests, poll until they
end, then read every result through ``messages.batches.results`` into a dict by custom_id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from anthropic import AsyncAnthropic
from common import arguments, report

MAX_REQUESTS = 100_000


def load(path: Path) -> list[Any]:
    with path.open("rb") as source:
        return [json.loads(line) for line in source if line.strip()]


async def one_batch(client: AsyncAnthropic, requests: list[Any], results: dict[str, Any]) -> None:
    batch = await client.messages.batches.create(requests=requests)
    while (batch := await client.messages.batches.retrieve(batch.id)).processing_status != "ended":  # noqa: ASYNC110 - polls a remote batch
        await asyncio.sleep(1.0)
    async for entry in await client.messages.batches.results(batch.id):
        results[entry.custom_id] = entry


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    requests = await asyncio.to_thread(load, Path(args.input))
    client = AsyncAnthropic(base_url=args.base_url)
    results: dict[str, Any] = {}
    await asyncio.gather(*(one_batch(client, requests[start : start + MAX_REQUESTS], results)
                           for start in range(0, len(requests), MAX_REQUESTS)))
    ok = sum(1 for r in results.values() if r.result.type == "succeeded")
    await client.close()
    report(ok, started)


if __name__ == "__main__":
    asyncio.run(main(arguments()))
