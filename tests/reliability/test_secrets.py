"""Secrets: the API key never reaches the store, the spool, downloads, logs, exception messages or reprs,
and the files that hold request and response bodies are the owner's alone.

The key is a distinctive string; after full runs with faults (debug logging on) every byte we wrote or
printed is searched for it.
"""

from __future__ import annotations

import logging
import stat
import traceback
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from asyncbatch import BatchManager, ProviderError
from asyncbatch.emulator import EmulatorConfig, FaultSpec, run_emulator
from asyncbatch.http import HttpClient, RetryPolicy
from asyncbatch.providers.anthropic import AnthropicProvider
from asyncbatch.providers.openai import AzureOpenAIProvider, OpenAIProvider
from tests.helpers import API_KEY, chat_line, write_jsonl
from tests.reliability.support import RUN_ARGS, cli, cli_env, files_under

KEY = API_KEY.encode()
STORM = FaultSpec(rate_429=0.05, rate_500=0.05, rate_503=0.05, drop_rate=0.05, truncate_rate=0.3,
                  drop_after_create_rate=0.3, retry_after=0.01)


def assert_no_key(texts: Iterable[str | bytes], where: str) -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode()
        assert KEY not in data, f"the API key leaked into {where}: ...{data[max(0, data.find(KEY) - 80):][:200]!r}"


def assert_owner_only(paths: Iterable[Path]) -> None:
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: others can read it"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_full_run_with_faults_leaves_the_key_nowhere(tmp_path: Path, provider: str) -> None:
    """Submit, run (killed once, restarted), status, results and cost through the CLI with -vv logging,
    against an emulator that accepts only our key and injects faults everywhere."""
    db = tmp_path / "store" / "jobs.db"
    model = "gpt-5.4-mini" if provider == "openai" else "claude-haiku-4-5"
    lines = [chat_line(f"r{i:03d}", "[[fail_attempts:1]]" if i % 3 == 0 else f"q {i}", model=model,
                       max_tokens=32) for i in range(120)]
    config = EmulatorConfig(api_keys=[API_KEY], faults={"*": STORM}, seed=3, complete_after=0.3)
    outputs: list[str] = []
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        base = emu.openai_base_url if provider == "openai" else emu.anthropic_base_url
        source = write_jsonl(tmp_path / "in.jsonl", lines)
        steps = [
            ("-vv", "submit", str(source), "--db", str(db), "--provider", provider, "--base-url", base),
            ("-vv", "run", "--db", str(db), *RUN_ARGS, "--max-requests-per-batch", "40"),
        ]
        for args in steps:
            done = await cli(*args)
            outputs += [done.out, done.err]
            assert done.code == 0, done.err[-800:]
        job_id = outputs[0].split()[-1]
        for args in (("status", job_id), ("list",), ("cost", job_id),
                     ("results", job_id, "-o", str(tmp_path / "out.jsonl"))):
            done = await cli("-vv", *args, "--db", str(db))
            outputs += [done.out, done.err]
            assert done.code == 0, done.err[-800:]
        assert sum(emu.ledger.totals().faults.values()) >= 3
    assert "DEBUG" in "".join(outputs)  # the logs really were at debug level
    assert_no_key(outputs, "the command line's output and logs")
    for path in files_under(db.parent, tmp_path / "out.jsonl"):
        assert_no_key([path.read_bytes()], str(path))
    assert_owner_only(files_under(db.parent))


async def test_store_spool_and_download_files_are_owner_only_from_the_first_byte(tmp_path: Path) -> None:
    """The spool (request bodies) as a SIGKILL leaves it mid-way; response bodies go from the wire to the store
    and never touch another file."""
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(1500)])
        assert (await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)).code == 0
        seen: set[Path] = set()
        for point in ("after_upload", "mid_ingest"):
            killed = await cli("run", "--db", str(db), *RUN_ARGS, "--ingest-chunk", "100",
                               env=cli_env(ASYNCBATCH_FAILPOINTS=point))
            assert killed.code == -9, killed.err
            files = set(files_under(tmp_path)) - set(files_under(tmp_path / "emu", tmp_path / "in.jsonl"))
            dirs = {d for p in files for d in p.parents if tmp_path in d.parents}
            assert_owner_only(files | dirs)
            seen |= files
        assert (await cli("run", "--db", str(db), *RUN_ARGS)).code == 0
    names = {p.name for p in seen}
    assert {"jobs.db", "jobs.db-wal", "jobs.db-shm"} <= names
    assert not any(p.parent.name == "downloads" for p in seen), "a response body was written outside the store"
    assert any(p.name.startswith("shard-") for p in seen), "no spool file was caught"


@asynccontextmanager
async def key_echoing_server() -> AsyncIterator[str]:
    """A provider that misbehaves: every answer quotes the credentials it was sent (as OpenAI's 401 partly
    does), in error bodies, headers and messages."""

    async def echo(request: web.Request) -> web.Response:
        sent = request.headers.get("authorization", "") + request.headers.get("x-api-key", "") + \
            request.headers.get("api-key", "")
        status = 500 if "flaky" in request.path else 401
        body = {"error": {"message": f"Incorrect API key provided: {sent}", "type": "invalid_request_error",
                          "code": sent}, "type": "error"}
        return web.json_response(body, status=status, headers={"x-request-id": sent, "x-should-retry": "false"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def providers(base: str) -> list[Any]:
    retry = RetryPolicy(max_retries=0)
    return [OpenAIProvider(api_key=API_KEY, base_url=base + "/v1", retry=retry),
            AzureOpenAIProvider(api_key=API_KEY, base_url=base, retry=retry),
            AnthropicProvider(api_key=API_KEY, base_url=base, retry=retry)]


async def test_errors_and_reprs_never_show_the_key_even_when_the_provider_echoes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    async with key_echoing_server() as base:
        for provider in providers(base):
            for call in (provider.retrieve("batch_1"), provider.retrieve("batch_flaky"), provider.cancel("b")):
                with pytest.raises(ProviderError) as info:
                    await call
                error = info.value
                seen += [str(error), repr(error), *map(str, error.args), str(error.code), str(error.request_id),
                         *traceback.format_exception(error)]
            seen += [repr(provider), str(vars(provider).get("_http"))]
            await provider.aclose()
        http = HttpClient(base, headers={"Authorization": f"Bearer {API_KEY}"}, secrets=[API_KEY],
                          retry=RetryPolicy(max_retries=1, base_delay=0.01))
        with pytest.raises(ProviderError) as info:
            async for _ in http.lines("/v1/files/flaky/content"):
                pass
        seen += [str(info.value), repr(info.value), repr(http)]
        await http.aclose()
        async with BatchManager(tmp_path / "jobs.db", provider=providers(base)[0]) as bm:
            job = await bm.submit([chat_line("a")])
            with pytest.raises(ProviderError) as info:
                with anyio.fail_after(30):
                    await bm.wait(job.id)
            seen += [str(info.value), repr(bm), repr(bm.store), repr(job), repr(await bm.status(job.id))]
    assert "Incorrect API key provided" in "".join(seen)  # the server did echo it
    assert_no_key(seen, "an exception or a repr")
    assert_no_key([record.getMessage() for record in caplog.records], "the logs")
    assert_no_key([path.read_bytes() for path in files_under(tmp_path)], "a file")
