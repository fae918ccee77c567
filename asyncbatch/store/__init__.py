"""Durable job store: the ``Store`` protocol, its backends, and ``open_store`` which picks one from a URL.

A store is named by one string everywhere (``BatchManager(db)``, the CLI's ``--db``, ``ASYNCBATCH_DB``):

* a path, or ``sqlite:///relative/path`` / ``sqlite:////absolute/path`` (``:memory:`` for throwaway runs): the
  embedded SQLite store, one file for the processes of one machine;
* ``postgresql://user@host:port/db`` or ``postgres://...``: PostgreSQL, for workers on many machines
  (the ``asyncbatch[postgres]`` extra).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import BatchClaimedError, LeaseLostError, StoreError
from ..model import NewRequest, PlannedShard, ResultRow, Settlement, StoredResult
from .base import PlanningSession, Store
from .sqlite import SQLiteStore

SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str | os.PathLike[str]) -> bool:
    return isinstance(url, str) and url.startswith(POSTGRES_SCHEMES)


def sqlite_path(url: str | os.PathLike[str]) -> str:
    """The file of a SQLite store named by a path or a ``sqlite:///`` URL."""
    text = os.fspath(url)
    if text.startswith(SQLITE_SCHEME):
        rest = text[len(SQLITE_SCHEME):]
        if not rest.startswith("/"):
            raise StoreError(f"a SQLite store URL is sqlite:///path (three slashes), got {text!r}")
        return rest[1:] or ":memory:"
    return text


def open_store(url: str | os.PathLike[str], **options: Any) -> Store:
    """The store a URL names, not opened yet (``await store.open()``, or let ``BatchManager`` do it)."""
    if is_postgres_url(url):
        try:
            backend = importlib.import_module(".postgres", __name__)
        except ImportError as exc:  # psycopg is an optional extra
            raise StoreError(
                f"a PostgreSQL store needs the postgres extra: pip install 'asyncbatch[postgres]' ({exc})"
            ) from None
        store: Store = backend.PostgresStore(str(url), **options)
        return store
    return SQLiteStore(sqlite_path(url), **options)


__all__ = [
    "BatchClaimedError",
    "LeaseLostError",
    "NewRequest",
    "PlannedShard",
    "PlanningSession",
    "ResultRow",
    "SQLiteStore",
    "Settlement",
    "Store",
    "StoredResult",
    "is_postgres_url",
    "open_store",
    "sqlite_path",
]
