"""Durable job store: the ``Store`` interface and its SQLite implementation."""

from .base import (
    BatchClaimedError,
    LeaseLostError,
    NewRequest,
    PlannedShard,
    ResultRow,
    Settlement,
    Store,
    StoredResult,
)
from .sqlite import SQLiteStore, new_owner

__all__ = [
    "BatchClaimedError",
    "LeaseLostError",
    "NewRequest",
    "PlannedShard",
    "ResultRow",
    "SQLiteStore",
    "Settlement",
    "Store",
    "StoredResult",
    "new_owner",
]
