"""Contender (c): a plain script with the official ``openai`` SDK (AsyncOpenAI), as one would write it.

Split the input into files of at most 50,000 lines (the API's limit), upload them, create the batches, poll
until they end, download each output file and parse every line. Results end up in a dict by custom_id.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from common import TERMINAL, arguments, parse_output, report, split, succeeded
from openai import AsyncOpenAI


async def one_batch(client: AsyncOpenAI, part: Path, results: dict[str, dict[str, Any]]) -> None:
    with part.open("rb") as handle:
        uploaded = await client.files.create(file=handle, purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while (batch := await client.batches.retrieve(batch.id)).status not in TERMINAL:  # noqa: ASYNC110 - polls a remote batch
        await asyncio.sleep(1.0)
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = await client.files.content(file_id)
            parse_output(content.text, results)


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    workdir = Path(args.workdir)
    client = AsyncOpenAI(base_url=args.base_url)
    results: dict[str, dict[str, Any]] = {}
    await asyncio.gather(*(one_batch(client, part, results) for part in split(Path(args.input), workdir)))
    await client.close()
    report(succeeded(results), started)


if __name__ == "__main__":
    asyncio.run(main(arguments()))
