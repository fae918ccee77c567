"""The README's gateway section, run: its config, its key request and its client code, against the emulator."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import yaml

from asyncbatch.emulator import Emulator
from tests.gateway.conftest import chat, jsonl, running

README = Path(__file__).parents[2] / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("### A batch gateway for teams"):]


async def test_the_readme_gateway_section_works(emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = section()
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))  # type: ignore[union-attr]
    config["model_list"][0]["litellm_params"]["api_base"] = emu.openai_base_url  # the emulator stands in
    config["model_list"][1]["litellm_params"]["api_base"] = emu.anthropic_base_url
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-up-1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-up-2")
    async with running(path, tmp_path / "gateway.db") as gateway:
        generate = json.loads(re.search(r"-d '(\{.*?\})'", text).group(1))  # type: ignore[union-attr]
        key = await gateway.new_key(**generate)
        (tmp_path / "requests.jsonl").write_bytes(jsonl([chat("a"), chat("b", model="claude-sonnet")]))
        code = re.search(r"```py\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
        code = code.replace('"sk-..."', repr(key)).replace("http://127.0.0.1:4000", gateway.url)
        code = code.replace("time.sleep(5)", "time.sleep(0.05)")
        done = await anyio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120))
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("completed") and "completed=2" in first
    assert second.startswith('{"id":"batch_req_')

