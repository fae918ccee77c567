"""Auth, secrets, admin endpoints and the threaded server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import msgspec
import openai
import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI, OpenAI

from asyncbatch.emulator import Emulator, EmulatorConfig, EmulatorThread, FaultSpec

from .conftest import KEY
from .support import chat_line, jsonl

GOOD, WRONG = "sk-the-good-key-31337", "sk-wrong-key-8675309"


async def test_openai_auth(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emu.config.api_keys = [GOOD]
    async with AsyncOpenAI(base_url=emu.openai_base_url, api_key=WRONG, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.files.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert WRONG not in str(caught.value.body) and GOOD not in str(caught.value.body)
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.openai_base_url + "/files") as response:
            assert response.status == 401
            assert "didn't provide an API key" in (await response.json())["error"]["message"]
        async with session.get(emu.openai_base_url + "/files", headers={"api-key": GOOD}) as response:
            assert response.status == 200  # Azure-style header
    assert WRONG not in caplog.text and GOOD not in caplog.text
    assert GOOD not in emu.ledger.to_json().decode()


async def test_anthropic_auth(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    emu.config.api_keys = [GOOD]
    async with AsyncAnthropic(base_url=emu.anthropic_base_url, api_key=WRONG, max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await client.messages.batches.list()
    body: Any = caught.value.body
    assert body["error"]["type"] == "authentication_error" and WRONG not in str(body)
    async with AsyncAnthropic(base_url=emu.anthropic_base_url, api_key=GOOD, max_retries=0) as client:
        assert (await client.messages.batches.list()).data == []  # this SDK sends Authorization: Bearer
    headers = {"x-api-key": GOOD, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as session, session.get(
            emu.url + "/v1/messages/batches") as response:
        assert response.status == 200
    assert WRONG not in caplog.text and GOOD not in caplog.text


async def test_unknown_paths_get_provider_envelopes(emu: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(emu.openai_base_url + "/fine_tuning/jobs") as response:
            assert response.status == 404 and "Unrecognized request URL" in (await response.json())["error"]["message"]
        async with session.put(emu.url + "/v1/messages/batches") as response:
            assert response.status == 405 and (await response.json())["type"] == "error"


async def test_admin_endpoints(emu: Emulator, oai: AsyncOpenAI) -> None:
    source = await oai.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    await oai.batches.retrieve((await oai.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions",
                                                         completion_window="24h")).id)
    async with aiohttp.ClientSession(base_url=emu.url) as session:
        async with session.get("/_emulator/health") as response:
            assert await response.json() == {"status": "ok"}
        async with session.get("/_emulator/ledger") as response:
            ledger = await response.json()
        assert ledger["totals"]["billed"] == 1 and ledger["requests"][0]["custom_id"] == "a"
        assert [b["status"] for b in ledger["batches"]] == ["completed"]
        emu.config.api_keys = [KEY]
        async with session.get("/_emulator/config") as response:
            shown = await response.json()
        assert shown["complete_after"] == 0 and shown["api_keys"] == ["[REDACTED]"]

        patch = {"complete_after": 5, "faults": {"files_read": {"rate_500": 0.25}}}
        async with session.patch("/_emulator/config", json=patch) as response:
            assert response.status == 200 and (await response.json())["complete_after"] == 5
        assert emu.config.complete_after == 5  # the live object changed in place
        assert emu.config.faults == {"files_read": FaultSpec(rate_500=0.25)}
        bad: dict[str, Any]
        for bad in ({"no_such_knob": 1}, {"faults": {"nowhere": {}}}, {"completion_windows": ["soon"]}):
            async with session.patch("/_emulator/config", json=bad) as response:
                assert response.status == 400 and "error" in await response.json()
        assert emu.config.complete_after == 5

        async with session.post("/_emulator/clock", json={"advance": 30}) as response:
            assert (await response.json())["offset"] == 30
    assert emu.clock.offset == 30


def test_emulator_thread_serves_sync_clients(tmp_path: Path) -> None:
    with EmulatorThread(EmulatorConfig(seed=3), data_dir=tmp_path / "data") as emu:
        assert emu.url.startswith("http://127.0.0.1:")
        assert emu.openai_base_url == emu.url + "/v1" and emu.anthropic_base_url == emu.url
        client = OpenAI(base_url=emu.openai_base_url, api_key=KEY, max_retries=0)
        source = client.files.create(file=("in.jsonl", jsonl([chat_line("a"), chat_line("b")])), purpose="batch")
        emu.config.complete_after = 0
        batch = client.batches.retrieve(client.batches.create(
            input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h").id)
        assert batch.status == "completed"
        assert emu.ledger.billed_count("a") == 1
        assert (tmp_path / "data" / "files" / source.id).exists()
        client.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = emu.url


def test_emulator_thread_reports_startup_errors(tmp_path: Path) -> None:
    with EmulatorThread() as first:
        port = int(first.url.rsplit(":", 1)[1])
        with pytest.raises(OSError):
            EmulatorThread(port=port).start()


def test_config_round_trips_as_json_and_hides_keys() -> None:
    config = EmulatorConfig(api_keys=[GOOD], expire_batches=[2], faults={"*": FaultSpec(rate_429=0.1)})
    assert msgspec.json.decode(msgspec.json.encode(config), type=EmulatorConfig) == config
    assert GOOD not in repr(config) and GOOD not in str(config) and "expire_batches=[2]" in repr(config)
    assert config.public()["api_keys"] == ["[REDACTED]"]
    with pytest.raises(msgspec.ValidationError, match="unknown fault groups"):
        msgspec.convert({"faults": {"file_upload": {}}}, EmulatorConfig)
