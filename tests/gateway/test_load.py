"""Many clients at once, and a 200 MB upload at flat memory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from openai import AsyncOpenAI

from asyncbatch.emulator import Emulator, EmulatorConfig, run_emulator
from tests.gateway.conftest import Gateway, chat, proxy_yaml, read_lines, upload, wait_for
from tests.gateway.test_process import exited, new_key, proxy


async def test_eight_clients_uploading_and_creating_at_once(gateway: Gateway, emu: Emulator) -> None:
    results: dict[int, Any] = {}

    async def one_client(n: int) -> None:
        client = gateway.client(await gateway.new_key(team_id=f"team-{n % 2}"))
        lines = [chat(f"c{n}-r{i}", f"client {n} item {i}") for i in range(40)]
        batch = await client.batches.create(input_file_id=await upload(client, lines),
                                            endpoint="/v1/chat/completions", completion_window="24h")
        done = await wait_for(client, batch.id, within=60)
        assert done.output_file_id is not None
        results[n] = (done, sorted(x["custom_id"] for x in await read_lines(client, done.output_file_id)))

    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(one_client, n)
    for n, (done, custom_ids) in results.items():
        assert done.status == "completed" and done.request_counts.completed == 40
        assert custom_ids == sorted(f"c{n}-r{i}" for i in range(40))  # its own lines, no one else's
    assert len({done.id for done, _ in results.values()}) == 8
    assert len(emu.ledger.batches_created()) == 8


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def write_big_file(path: Path, size: int) -> int:
    """A batch input file of about ``size`` bytes (1 KiB lines); returns its line count."""
    pad = "x" * 900
    lines = 0
    with path.open("w") as out:
        written = 0
        while written < size:
            line = json.dumps(chat(f"req-{lines:07d}", f"{pad} {lines}")) + "\n"
            out.write(line)
            written += len(line)
            lines += 1
    return lines


@pytest.mark.slow
async def test_a_200_mb_upload_streams_at_flat_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.jsonl"
    count = await anyio.to_thread.run_sync(write_big_file, big, 200_000_000)
    config, db = tmp_path / "proxy.yaml", tmp_path / "gateway.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        config.write_text(proxy_yaml(emu))
        async with proxy(config, db) as (url, process):
            before = peak_rss_mib(process.pid)
            async with AsyncOpenAI(api_key=await new_key(url), base_url=url + "/v1", max_retries=0,
                                   timeout=600) as client:
                with big.open("rb") as source:
                    created = await client.files.create(file=source, purpose="batch")
                peak = peak_rss_mib(process.pid)
                assert created.bytes == big.stat().st_size
                downloaded = 0
                async with client.files.with_streaming_response.content(created.id) as response:
                    async for chunk in response.iter_bytes():
                        downloaded += len(chunk)
                assert downloaded == created.bytes
            process.terminate()
            await exited(process)
    print(f"\n200 MB upload ({count} lines): gateway peak RSS {before:.0f} MiB before, {peak:.0f} MiB after",
          file=sys.stderr)
    if os.environ.get("GATEWAY_RSS_REPORT"):
        Path(os.environ["GATEWAY_RSS_REPORT"]).write_text(f"{before:.1f} {peak:.1f}\n")
    assert peak - before < 64, f"the upload grew the gateway's memory by {peak - before:.0f} MiB"
