"""Contender (d): litellm's async file and batch functions (``acreate_file``, ``acreate_batch``,
``aretrieve_batch``, ``afile_content``), the same steps as the plain ``openai`` script."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of the price list at import

import litellm

MAX_LINES = 50_000
TERMINAL = ("completed", "failed", "expired", "cancelled")


def split(path: Path, workdir: Path) -> list[Path]:
    parts: list[Path] = []
    with path.open("rb") as source:
        lines = source.readlines()
    for start in range(0, len(lines), MAX_LINES):
        part = workdir / f"part-{len(parts)}.jsonl"
        part.write_bytes(b"".join(lines[start : start + MAX_LINES]))
        parts.append(part)
    return parts


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
            for line in content.text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    results[item["custom_id"]] = item


async def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    parts = split(Path(args.input), Path(args.workdir))
    await asyncio.gather(*(one_batch(args.base_url, part, results) for part in parts))
    ok = sum(1 for r in results.values() if (r.get("response") or {}).get("status_code") == 200)
    print(json.dumps({"ok": ok, "inner": time.perf_counter() - started}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workdir", required=True)
    asyncio.run(main(parser.parse_args()))
