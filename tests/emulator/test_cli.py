"""The command line: a real subprocess that serves until SIGTERM/SIGINT, configured by file and options."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import KEY

ENTRY = [sys.executable, "-m", "asyncbatch.emulator.cli"]


async def start(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(*ENTRY, "--port", "0", *args, stdout=subprocess.PIPE,
                                                   stderr=subprocess.PIPE)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
    return process, line.decode().strip()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_serves_until_signalled(tmp_path: Path, stop: signal.Signals) -> None:
    config = tmp_path / "emulator.json"
    config.write_text(json.dumps({"seed": 5, "complete_after": 3, "faults": {"files_read": {"rate_429": 0.5}}}))
    process, url = await start("--config", str(config), "--complete-after", "0", "--api-key", KEY,
                               "--completion-window", "24h", "--completion-window", "7d",
                               "--data-dir", str(tmp_path / "data"))
    try:
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(base_url=url) as session:
            async with session.get("/_emulator/health") as response:
                assert await response.json() == {"status": "ok"}
            async with session.get("/_emulator/config") as response:
                served = await response.json()
            async with session.get("/v1/batches", headers={"authorization": "Bearer nope"}) as response:
                assert response.status == 401
        assert (served["seed"], served["complete_after"], served["api_keys"]) == (5, 0, ["[REDACTED]"])
        assert served["completion_windows"] == ["24h", "7d"] and served["faults"]["files_read"]["rate_429"] == 0.5
        assert (tmp_path / "data" / "files").is_dir()
    finally:
        process.send_signal(stop)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    assert process.stderr is not None
    assert KEY not in (await process.stderr.read()).decode()


async def test_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"complete_after": "soon"}))
    process = await asyncio.create_subprocess_exec(*ENTRY, "--config", str(config), stderr=subprocess.PIPE)
    assert await asyncio.wait_for(process.wait(), timeout=20) == 2
    assert process.stderr is not None and b"bad configuration" in await process.stderr.read()


def test_import_is_light_and_help_works() -> None:
    probe = "import sys, asyncbatch.emulator.cli; print(sorted(m for m in ('aiohttp', 'anyio') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    shown = subprocess.run([*ENTRY, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--config", "--data-dir", "--complete-after", "--fail-rate", "--api-key", "--expire-batch"):
        assert option in shown


async def test_prints_the_variables_to_export() -> None:
    """The bare address is not what the OpenAI clients want (they need /v1): the exact lines are printed."""
    process, url = await start()
    try:
        assert process.stdout is not None
        exports = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
        keys = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=20) == 0
    assert exports == f"export OPENAI_BASE_URL={url}/v1 ANTHROPIC_BASE_URL={url}"
    assert keys.startswith("export OPENAI_API_KEY=") and "ANTHROPIC_API_KEY=" in keys
