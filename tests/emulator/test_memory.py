"""Memory stays flat: a batch file is uploaded, validated, run and downloaded as streams.

The emulator runs as a CLI subprocess so its peak RSS (VmHWM) can be read. The default size keeps the suite
fast; ``ASYNCBATCH_EMULATOR_RSS_MB=200`` measures the 200 MB case (figures printed with ``-s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import KEY

MAX_LINES = 50_000


def line(i: int) -> str:
    """About 4 KB: 50,000 lines (the OpenAI maximum) make a file just under 200 MB."""
    body = {"model": "gpt-5.4-mini", "messages": [{"role": "user", "content": f"{i:05} " + "x" * 3980}]}
    return json.dumps({"custom_id": f"r{i:05}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n"


def write_input(path: Path, megabytes: float) -> int:
    count = min(MAX_LINES, max(1, int(megabytes * 1024 * 1024 / len(line(0)))))
    with path.open("w") as out:
        out.writelines(line(i) for i in range(count))
    return count


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def run_batch(session: aiohttp.ClientSession, url: str, source: Path) -> int:
    """Upload, create, poll to the end, download the output; the number of output lines."""
    with source.open("rb") as handle:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", handle, filename="input.jsonl")
        async with session.post(url + "/v1/files", data=form) as response:
            file_id = (await response.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    async with session.post(url + "/v1/batches", json=body) as response:
        batch = await response.json()
    while batch["status"] not in ("completed", "failed"):
        async with session.get(f"{url}/v1/batches/{batch['id']}") as response:
            batch = await response.json()
    assert batch["status"] == "completed", batch["errors"]
    lines = 0
    async with session.get(f"{url}/v1/files/{batch['output_file_id']}/content") as response:
        async for chunk in response.content.iter_chunked(1 << 16):
            lines += chunk.count(b"\n")
    return lines


async def measure(tmp_path: Path, megabytes: float) -> tuple[float, float, int]:
    """(peak RSS after a one-line batch, peak RSS after the big batch, requests) in a fresh emulator."""
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    write_input(small, 0)
    count = write_input(big, megabytes)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncbatch.emulator.cli", "--port", "0", "--data-dir", str(tmp_path / "data"),
        stdout=subprocess.PIPE)
    assert process.stdout is not None
    url = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
    try:
        async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"},
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            assert await run_batch(session, url, small) == 1
            baseline = peak_rss_mb(process.pid)
            assert await run_batch(session, url, big) == count
            return baseline, peak_rss_mb(process.pid), count
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read peak RSS")
async def test_peak_rss_does_not_grow_with_file_size(tmp_path: Path) -> None:
    megabytes = float(os.environ.get("ASYNCBATCH_EMULATOR_RSS_MB", "16"))
    baseline, peak, count = await measure(tmp_path, megabytes)
    print(f"\nemulator peak RSS: {baseline:.1f} MB after 1 request, {peak:.1f} MB after {count} requests "
          f"({megabytes:g} MB input file)")
    assert peak - baseline < 40
