"""The gateway on loopback, in the test's event loop, with the emulator as every upstream provider and the
official ``openai`` SDK as the client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from openai import AsyncOpenAI

from asyncbatch.emulator import Emulator
from asyncbatch.gateway import load_config
from asyncbatch.gateway.server import serving

MASTER = "sk-master-0123456789SECRET"
UPSTREAM_KEY = "sk-upstream-literal-SECRET"
TERMINAL = ("completed", "failed", "expired", "cancelled")


def proxy_yaml(emu: Emulator, **settings: Any) -> str:
    """A config in LiteLLM's format: two OpenAI models (chat and embeddings, one key written in the file) and a
    Claude model whose key is an environment variable."""
    general = {"master_key": "os.environ/PROXY_MASTER_KEY", "max_batch_file_size_mb": 200, **settings}
    config = {
        "model_list": [
            {"model_name": "gpt-4o-mini",
             "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": emu.openai_base_url,
                                "api_key": UPSTREAM_KEY}},
            {"model_name": "text-embedding-3-small",
             "litellm_params": {"model": "openai/text-embedding-3-small", "api_base": emu.openai_base_url,
                                "api_key": UPSTREAM_KEY}},
            {"model_name": "claude-sonnet",
             "litellm_params": {"model": "anthropic/claude-sonnet-4-5", "api_base": emu.anthropic_base_url,
                                "api_key": "os.environ/GATEWAY_TEST_ANTHROPIC_KEY"}},
        ],
        "general_settings": general,
    }
    return json.dumps(config)  # JSON is YAML


class Gateway:
    """A running gateway: its URL, and helpers to make keys and clients."""

    def __init__(self, url: str, db: Path) -> None:
        self.url = url
        self.db = db
        self.clients: list[AsyncOpenAI] = []

    async def admin(self, method: str, path: str, *, key: str = MASTER, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, headers={"Authorization": f"Bearer {key}"}, **kwargs) as response:
            return response.status, await response.json()

    async def new_key(self, **fields: Any) -> str:
        status, body = await self.admin("POST", "/key/generate", json=fields)
        assert status == 200, body
        key: str = body["key"]
        return key

    def client(self, key: str, *, v1: bool = True) -> AsyncOpenAI:
        client = AsyncOpenAI(api_key=key, base_url=self.url + ("/v1" if v1 else ""), max_retries=0)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXY_MASTER_KEY", MASTER)
    monkeypatch.setenv("GATEWAY_TEST_ANTHROPIC_KEY", "sk-ant-upstream-SECRET")


GatewayFactory = Callable[..., Awaitable[Gateway]]


@asynccontextmanager
async def running(config_path: Path, db: Path, **options: Any) -> AsyncIterator[Gateway]:
    """The gateway served from a task of its own: pytest-asyncio sets a fixture up and tears it down in two
    different tasks, and the gateway's task groups must be left in the task that entered them."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with serving(load_config(config_path), str(db), port=0, poll_interval=0.05,
                               max_poll_interval=0.2, **options) as url:
                ready.set_result(url)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.create_task(serve())
    started = None
    try:
        started = Gateway(await ready, db)
        yield started
    finally:
        if started is not None:
            await started.aclose()
        stop.set()
        await task


@pytest.fixture
async def gateway(emu: Emulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    config_path = tmp_path / "proxy.yaml"
    config_path.write_text(proxy_yaml(emu))
    async with running(config_path, tmp_path / "gateway.db") as started:
        yield started


@pytest.fixture
async def gateway_with(emu: Emulator, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """A factory of gateways whose ``general_settings`` hold the given values."""
    async with AsyncExitStack() as stack:
        async def make(**settings: Any) -> Gateway:
            config_path = tmp_path / "custom.yaml"
            config_path.write_text(proxy_yaml(emu, **settings))
            return await stack.enter_async_context(running(config_path, tmp_path / "custom.db"))

        yield make


def jsonl(lines: Iterable[Mapping[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat(custom_id: str, text: str = "hello", model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20}}


def embed(custom_id: str, text: str = "embed me", model: str = "text-embedding-3-small") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"model": model, "input": text}}


async def upload(client: AsyncOpenAI, lines: Iterable[Mapping[str, Any]], name: str = "input.jsonl") -> str:
    created = await client.files.create(file=(name, jsonl(lines)), purpose="batch")
    return created.id


async def wait_for(client: AsyncOpenAI, batch_id: str, *, within: float = 30.0) -> Any:
    """Poll the batch as a client does until it ends."""
    deadline = time.monotonic() + within
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        await anyio.sleep(0.05)


async def read_lines(client: AsyncOpenAI, file_id: str) -> list[dict[str, Any]]:
    content = await client.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]
