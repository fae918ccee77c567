"""Keys stay with their provider: each reads its own key and base-URL variables and never another's."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.errors import AuthenticationError, ValidationError
from asyncbatch.providers import PROVIDER_NAMES, create_provider
from asyncbatch.providers.openai import OpenAIProvider
from tests.engine.test_crash import cli, cli_env
from tests.helpers import API_KEY, chat_line, write_jsonl

GROQ_KEY = "gsk-test-groq-0123456789SECRET"
HOST_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "GROQ_API_KEY", "GROQ_BASE_URL", "TOGETHER_API_KEY",
                  "TOGETHER_BASE_URL", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def test_groq_with_only_the_openai_key_fails_naming_groq_api_key(tmp_path: Path) -> None:
    """The emulator stands in for Groq's address (GROQ_BASE_URL, as Groq's SDK reads it) and accepts only
    Groq's key: the OpenAI key never reaches it, and with Groq's key the job runs."""
    db, lines = tmp_path / "jobs.db", write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(3)])
    async with run_emulator(EmulatorConfig(api_keys=[GROQ_KEY]), data_dir=tmp_path / "emu") as emu:
        only_openai = cli_env(GROQ_BASE_URL=emu.openai_base_url)  # OPENAI_API_KEY set, GROQ_API_KEY not
        code, out, err = await cli("submit", str(lines), "--db", str(db), "--provider", "groq", env=only_openai)
        assert code != 0 and "GROQ_API_KEY" in err and API_KEY not in err  # refused at submit, nothing stored
        code, out, err = await cli("list", "--db", str(db), env=only_openai)
        assert code == 0 and out.strip() == ""
        assert emu.ledger.totals().files == 0  # nothing was sent, with any key

        with_groq = cli_env(GROQ_BASE_URL=emu.openai_base_url, GROQ_API_KEY=GROQ_KEY)
        code, out, err = await cli("submit", str(lines), "--db", str(db), "--provider", "groq", env=with_groq)
        assert code == 0, err
        job_id = out.split()[-1]
        code, out, err = await cli("run", "--db", str(db), "--poll-interval", "0.05", env=with_groq)
        assert code == 0 and f"{job_id} done: 3 succeeded" in out, err


def test_each_host_reads_only_its_own_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", API_KEY)
    clean_env.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    groq, together = create_provider("groq"), create_provider("together")
    assert groq.base_url == "https://api.groq.com/openai/v1" and together.base_url == "https://api.together.xyz/v1"
    assert create_provider("openai").base_url == "http://127.0.0.1:9/v1"

    clean_env.setenv("GROQ_BASE_URL", "http://127.0.0.1:7/openai/v1")
    clean_env.setenv("TOGETHER_BASE_URL", "http://127.0.0.1:8/v1")
    clean_env.delenv("OPENAI_BASE_URL")
    assert create_provider("groq").base_url == "http://127.0.0.1:7/openai/v1"
    assert create_provider("together").base_url == "http://127.0.0.1:8/v1"
    assert create_provider("openai").base_url == "https://api.openai.com/v1"  # never Groq's or Together's


async def test_a_missing_key_names_the_hosts_own_variable(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", API_KEY)
    for name, variable in (("groq", "GROQ_API_KEY"), ("together", "TOGETHER_API_KEY")):
        async with create_provider(name) as provider:
            with pytest.raises(AuthenticationError, match=variable) as raised:
                await provider.retrieve("batch_1")
        assert API_KEY not in str(raised.value)
    # a host the class does not know gets no key and no base URL from the environment
    with pytest.raises(ValidationError, match="base_url"):
        OpenAIProvider(name="myhost")
    async with OpenAIProvider(name="myhost", base_url="http://127.0.0.1:9/v1") as custom:
        with pytest.raises(AuthenticationError, match=r"no API key for myhost: pass api_key=$"):
            await custom.retrieve("batch_1")


async def test_help_lists_every_accepted_provider() -> None:
    for args in (("--help",), ("submit", "--help")):
        done = await anyio.run_process([sys.executable, "-m", "asyncbatch", *args])
        text = " ".join(done.stdout.decode().split())  # argparse wraps lines
        assert all(name in text for name in PROVIDER_NAMES), (args, text)
    code, _, err = await cli("submit", "in.jsonl", "--db", "x.db", "--provider", "nope")
    assert code == 2 and "groq" in err
