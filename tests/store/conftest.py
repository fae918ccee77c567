"""The store contract suite runs on every backend: ``stores`` is a factory of store objects on one fresh database,
each a connection of its own (another worker, another machine)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asyncbatch.store import Store, open_store

StoreFactory = Callable[..., Awaitable[Store]]

#: Backends the contract suite runs on, each giving the URL of a fresh, empty database (a second one on request).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path, bool], str]] = {
    "sqlite": lambda request, tmp_path, other: str(tmp_path / ("other.db" if other else "store.db")),
    "postgres": lambda request, tmp_path, other: (request.getfixturevalue("pg_server").database() if other
                                                  else str(request.getfixturevalue("pg_url"))),
}


@pytest.fixture(params=sorted(BACKENDS))
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Stores on one database; ``stores(other=True)`` opens one on a second, fresh database."""
    url = BACKENDS[request.param](request, tmp_path, False)
    opened: list[Store] = []

    async def make(*, other: bool = False, **options: Any) -> Store:
        store = open_store(BACKENDS[request.param](request, tmp_path, True) if other else url, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(stores: StoreFactory) -> Store:
    return await stores()
