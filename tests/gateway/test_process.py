"""``asyncbatch proxy`` as a process: the line it prints, its config errors, SIGKILL mid-run and a restart on
the same store (same ids, every custom_id once, nothing created twice upstream), ``--no-worker`` with an
``asyncbatch worker --config`` doing the work, and SIGTERM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from openai import AsyncOpenAI

from asyncbatch.emulator import EmulatorConfig, run_emulator
from tests.gateway.conftest import MASTER, chat, proxy_yaml, read_lines, upload, wait_for
from tests.helpers import verify_exactly_once

pytestmark = pytest.mark.slow
LISTENING = re.compile(r"asyncbatch proxy listening on (http://127\.0\.0\.1:\d+)")
FAST = ("--poll-interval", "0.05", "--max-poll-interval", "0.2")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "ASYNCBATCH_"))}
    return {**base, "PROXY_MASTER_KEY": MASTER, "GATEWAY_TEST_ANTHROPIC_KEY": "sk-ant-upstream-SECRET", **extra}


@asynccontextmanager
async def proxy(config: Path, db: Path, *args: str, **extra_env: str) -> AsyncIterator[tuple[str, Process]]:
    """``asyncbatch proxy`` started as users start it; yields its URL once it printed that it listens."""
    command = [sys.executable, "-m", "asyncbatch", "proxy", "--config", str(config), "--db", str(db), "--port", "0",
               *FAST, *args]
    async with await anyio.open_process(command, env=env(**extra_env)) as process:
        assert process.stdout is not None
        try:
            with anyio.fail_after(30):
                line = (await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 1000)).decode()
            match = LISTENING.match(line)
            assert match, line
            yield match.group(1), process
        finally:
            if process.returncode is None:
                process.kill()


async def exited(process: Process, within: float = 30.0) -> int:
    with anyio.fail_after(within):
        return await process.wait()


async def stderr_of(process: Process) -> str:
    """What an exited process wrote on stderr."""
    assert process.stderr is not None
    chunks = []
    with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError):
        while True:
            chunks.append(await process.stderr.receive())
    return b"".join(chunks).decode()


async def new_key(url: str) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(
            url + "/key/generate", json={"team_id": "t"}, headers={"Authorization": f"Bearer {MASTER}"}) as r:
        return str((await r.json())["key"])


async def test_sigkill_mid_run_then_restart_serves_the_same_ids_and_pays_once(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    db = tmp_path / "gateway.db"
    lines = [chat(f"req-{i:04d}", f"item {i}" + (" [[fail_attempts:1]]" if i % 7 == 0 else "")) for i in range(300)]
    lines += [chat(f"claude-{i:03d}", f"poem {i}", "claude-sonnet") for i in range(40)]
    async with run_emulator(EmulatorConfig(complete_after=1.0), data_dir=tmp_path / "emu") as emu:
        config.write_text(proxy_yaml(emu))
        # killed by the engine's own failpoints: right after an upstream create (the batch exists, its id is not
        # recorded), then with results ingested but their shard not marked so, then at some moment
        async with proxy(config, db, ASYNCBATCH_FAILPOINTS="after_create") as (url, process):
            key = await new_key(url)
            client = AsyncOpenAI(api_key=key, base_url=url + "/v1", max_retries=0)
            file_id = await upload(client, lines)
            batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                completion_window="24h")
            await client.close()
            assert await exited(process) == -signal.SIGKILL
        async with proxy(config, db, ASYNCBATCH_FAILPOINTS="before_finish") as (url, process):
            assert await exited(process) == -signal.SIGKILL
        async with proxy(config, db) as (url, process), \
                AsyncOpenAI(api_key=key, base_url=url + "/v1", max_retries=0) as client:
            assert (await client.files.retrieve(file_id)).id == file_id
            await anyio.sleep(0.3)
            process.send_signal(signal.SIGKILL)
        async with proxy(config, db) as (url, process):
            async with AsyncOpenAI(api_key=key, base_url=url + "/v1", max_retries=0) as client:
                done = await wait_for(client, batch.id, within=60)
                assert done.status == "completed" and done.request_counts is not None
                assert done.request_counts.completed == 340
                assert done.output_file_id is not None
                output = await read_lines(client, done.output_file_id)
            process.send_signal(signal.SIGTERM)
            assert await exited(process) == 0
            assert "stopped by SIGTERM" in await stderr_of(process)
        counts = Counter(line["custom_id"] for line in output)
        assert set(counts) == {line["custom_id"] for line in lines} and set(counts.values()) == {1}
        job_id = "job_" + batch.id.removeprefix("batch_")
        verify_exactly_once(db, emu.ledger, job_id, expect_all_succeeded=True)


async def test_no_worker_leaves_the_batches_to_a_worker_with_the_config(tmp_path: Path) -> None:
    config, db = tmp_path / "proxy.yaml", tmp_path / "gateway.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        config.write_text(proxy_yaml(emu))
        async with proxy(config, db, "--no-worker") as (url, _), \
                AsyncOpenAI(api_key=await new_key(url), base_url=url + "/v1", max_retries=0) as client:
            batch = await client.batches.create(input_file_id=await upload(client, [chat("a"), chat("b")]),
                                                endpoint="/v1/chat/completions", completion_window="24h")
            await anyio.sleep(0.5)
            assert (await client.batches.retrieve(batch.id)).status == "validating"  # nobody runs it
            assert emu.ledger.batches_created() == []
            # the literal upstream key is only in the config: --config gives it to the worker
            async with await anyio.open_process(
                    [sys.executable, "-m", "asyncbatch", "worker", "--db", str(db), "--config", str(config),
                     "--poll-interval", "0.05"], env=env()) as worker:
                done = await wait_for(client, batch.id, within=30)
                worker.send_signal(signal.SIGTERM)
                assert await exited(worker) == 0
            assert done.status == "completed" and done.request_counts and done.request_counts.completed == 2


async def test_a_broken_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    cases = {
        "model_list: []\n": "model_list: expected a non-empty list",
        "model_list:\n  - model_name: m\n    litellm_params: {model: nowhere/m}\n"
        "general_settings: {master_key: k}\n": "model_list[0].litellm_params.model: 'nowhere/m': unknown provider",
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m}\n":
            "general_settings.master_key: missing",
        "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_key: os.environ/NOPE_NOT_SET}\n"
        "general_settings: {master_key: k}\n": "environment variable NOPE_NOT_SET is not set",
        "model_list: [\n": "is not valid YAML",
    }
    for text, expected in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        result = await anyio.run_process([sys.executable, "-m", "asyncbatch", "proxy", "--config", str(path),
                                          "--db", str(tmp_path / "x.db")], check=False, env=env())
        err = result.stderr.decode()
        assert result.returncode == 1 and expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


async def test_unknown_config_keys_are_one_warning_line(tmp_path: Path) -> None:
    config, db = tmp_path / "proxy.yaml", tmp_path / "gateway.db"
    config.write_text("model_list:\n  - model_name: gpt-4o-batch\n    litellm_params:\n      model: gpt-4o\n"
                      "      api_key: os.environ/OPENAI_API_KEY\n      batch_enabled: true\n"
                      "    model_info: {mode: batch}\n"
                      "general_settings: {master_key: os.environ/PROXY_MASTER_KEY, proxy_batch_polling_interval: 60}\n"
                      "litellm_settings: {drop_params: true}\n")
    async with proxy(config, db, OPENAI_API_KEY="sk-x") as (_, process):
        process.send_signal(signal.SIGTERM)
        await exited(process)
        warnings = [line for line in (await stderr_of(process)).splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    for key in ("model_list[0].litellm_params.batch_enabled", "model_list[0].model_info",
                "general_settings.proxy_batch_polling_interval", "litellm_settings"):
        assert key in warnings[0]
