"""Credentials in URLs: a base URL carrying a key is refused before anything is stored, sent, logged or printed,
whichever way it comes in (``--base-url``, the environment, ``create_provider``, a provider given to
``BatchManager``); one recorded by an older version is shown redacted and never used."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from asyncbatch import BatchManager, ValidationError
from asyncbatch.checks import check_url, redact_url, shown_url, url_secrets
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.providers import PROVIDER_NAMES, create_provider
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.openai import AzureOpenAIProvider, OpenAIProvider
from tests.helpers import API_KEY, chat_line, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, cli_env

KEY = "sk-url-KEY-0123456789abcdef"
HOST = "127.0.0.1:9"
CREDENTIALED = [
    f"http://user:{KEY}@{HOST}/v1",
    f"http://{KEY}@{HOST}/v1",  # the key as the user name
    f"http://{HOST}/v1?key={KEY}",  # Gemini's spelling
    f"http://{HOST}/v1?api_key={KEY}",
    f"http://{HOST}/v1?api-version=2024-10-21&subscription-key={KEY}",  # Azure API Management's
    f"https://{HOST}/v1?access_token={KEY}",
    f"https://{HOST}/v1?Token={KEY}",
]


@pytest.mark.parametrize("url", CREDENTIALED)
def test_the_checks_find_the_credential_and_never_show_it(url: str) -> None:
    assert KEY in url_secrets(url)
    with pytest.raises(ValidationError) as info:
        check_url(url, field="base_url")
    assert info.value.field == "base_url" and "carries credentials" in str(info.value)
    for text in (str(info.value), repr(info.value), redact_url(url), shown_url(url)):
        assert KEY not in text
    assert check_url(url, field="webhook", credentials=True) == url  # a webhook may need them: only shown redacted


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/v1", "https://api.openai.com/v1", "https://r.openai.azure.com/openai?api-version=1",
     "http://[::1]:8080/v1"],
)
def test_clean_urls_pass_and_are_shown_whole(url: str) -> None:
    assert check_url(url, field="base_url") == url and shown_url(url) == url and url_secrets(url) == []


@pytest.mark.parametrize("name", PROVIDER_NAMES)
@pytest.mark.parametrize("url", CREDENTIALED[:4])
def test_every_provider_refuses_a_credentialed_base_url(name: str, url: str) -> None:
    with pytest.raises(ValidationError) as info:
        create_provider(name, base_url=url, api_key=API_KEY)
    assert info.value.field == "base_url" and KEY not in str(info.value)


@pytest.mark.parametrize(
    ("variable", "factory"),
    [("OPENAI_BASE_URL", OpenAIProvider), ("ANTHROPIC_BASE_URL", AnthropicProvider),
     ("AZURE_OPENAI_ENDPOINT", AzureOpenAIProvider)],
)
def test_a_credentialed_base_url_from_the_environment_is_refused(
    variable: str, factory: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, f"https://user:{KEY}@example.test")
    with pytest.raises(ValidationError) as info:
        factory(api_key=API_KEY)
    assert KEY not in str(info.value)


async def test_a_manager_is_never_given_such_a_provider_and_nothing_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with pytest.raises(ValidationError):
        BatchManager(db, provider=OpenAIProvider(api_key=API_KEY, base_url=CREDENTIALED[0]))
    assert not db.exists()


@pytest.mark.parametrize("url", CREDENTIALED[:3])
async def test_the_command_line_refuses_it_before_storing_and_never_prints_it(tmp_path: Path, url: str) -> None:
    db = tmp_path / "jobs.db"
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line("a")])
    given = await cli("-vv", "submit", str(source), "--db", str(db), "--base-url", url)
    assert given.code == 2 and "argument --base-url" in given.err and "carries credentials" in given.err
    from_env = await cli("-vv", "submit", str(source), "--db", str(db), env=cli_env(OPENAI_BASE_URL=url))
    anthropic = await cli("-vv", "submit", str(source), "--db", str(db), "--provider", "anthropic",
                          env=cli_env(ANTHROPIC_BASE_URL=url))
    for done in (from_env, anthropic):
        (error,) = [line for line in done.err.splitlines() if "error" in line]  # the rest is -vv debug logging
        assert done.code == 1 and error.startswith("asyncbatch: error: field 'base_url'"), done.err
    for done in (given, from_env, anthropic):
        assert KEY not in done.out + done.err and "Traceback" not in done.err
    assert not db.exists()


async def test_a_base_url_recorded_by_an_older_version_is_shown_redacted_and_never_used(tmp_path: Path) -> None:
    """A store written before credentials were refused: its reading commands show the URL redacted, and
    ``run`` stops with a clear error instead of sending the key anywhere."""
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(3)])
        done = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)
        job_id = done.out.split()[-1]
        leaky = emu.openai_base_url.replace("http://", f"http://user:{KEY}@")
        with sqlite3.connect(db) as conn:  # the job's default provider, and its route
            conn.execute("UPDATE jobs SET base_url = ?, routes = replace(routes, ?, ?)",
                         (leaky, emu.openai_base_url, leaky))
            assert KEY in conn.execute("SELECT routes FROM jobs").fetchone()[0]
        outputs = []
        for args in (("status", job_id, "--json"), ("list", "--json"), ("status", job_id), ("list",),
                     ("cost", job_id), ("results", job_id, "-o", str(tmp_path / "out.jsonl"))):
            done = await cli("-vv", *args, "--db", str(db))
            assert done.code == 0, done.err
            outputs.append(done.out + done.err)
        assert outputs[0].count('"base_url":"http://***@127.0.0.1:') == 2  # the job's, and its route's
        assert outputs[1].count('"base_url":"http://***@127.0.0.1:') == 2
        run = await cli("-vv", "run", "--db", str(db), *RUN_ARGS)
        assert run.code == 1 and "carries credentials" in run.err and "Traceback" not in run.err
        outputs.append(run.out + run.err)
        assert emu.ledger.totals().files == 0  # nothing was sent with it
    for output in outputs:
        assert KEY not in output
