"""Shared fixtures: a real emulator server on loopback, with its files under the test's tmp_path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from asyncbatch.emulator import Emulator, EmulatorConfig, run_emulator
from tests.pg import Server, in_ci, start_server


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    """The emulator with default settings; tests change ``emu.config`` as they need."""
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emulator") as emulator:
        yield emulator


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    """The PostgreSQL server of the session (see ``tests/pg.py``): skipped without one, except in CI."""
    server = start_server()
    if isinstance(server, str):
        if in_ci():
            pytest.fail(f"CI runs the PostgreSQL tests: {server}")
        pytest.skip(server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: Server) -> Iterator[str]:
    """A fresh PostgreSQL database with the schema in it, dropped after the test."""
    url = pg_server.database()
    yield url
    pg_server.drop(url)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh job store on each backend: a SQLite file that does not exist yet, or a PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "jobs.db")
