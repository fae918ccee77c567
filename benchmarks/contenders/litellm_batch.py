"""Contender (d): litellm's async file and batch functions (``acreate_file``, ``acreate_batch``,
``aretrieve_batch``, ``afile_content``), the same steps as the plain ``openai`` script."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of the price list at import

import litellm
from common import TERMINAL, arguments, parse_output, report, split, succeeded


async def one_batch(base_url: str, part: Path, results: dict[str, dict[str, Any]]) -> None:
    with part.open("rb") as handle:
        uploaded = await litellm.acreate_file(file=handle, purpose="batch", custom_llm_provider="openai",
                                              api_base=base_url)
    batch = await litellm.acreate_batch(completion_window="24h", endpoint="/v1/chat/completions",
                                        input_file_id=uploaded.id, custom_llm_provider="openai", api_base=base_url)
    while (batch := await litellm.aretrieve_batch(batch_id=batch.id, custom_llm_provider="openai",  # noqa: ASYNC110 - polls a remote batch
                                                 api_base=base_url)).status not in TERMINAL:
        await asyncio.sleep(1.0)
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = await litellm.afile_content(file_id=file_id, custom_llm_provider="openai", api_base=base_url)
            parse_output(content.text, results)


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    parts = split(Path(args.input), Path(args.workdir))
    await asyncio.gather(*(one_batch(args.base_url, part, results) for part in parts))
    report(succeeded(results), started)


if __name__ == "__main__":
    asyncio.run(main(arguments()))
