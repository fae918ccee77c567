"""Fixtures: a real emulator on loopback (fresh per test) and the official SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from asyncbatch.emulator import Emulator

KEY = "sk-emulator-test-key-0123456789"


@pytest.fixture
async def oai(emu: Emulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=emu.openai_base_url, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def ant(emu: Emulator) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=emu.anthropic_base_url, api_key=KEY, max_retries=0) as client:
        yield client
