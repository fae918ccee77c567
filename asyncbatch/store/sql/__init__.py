"""SQL of the SQLite store, kept in .sql files beside this module."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

SCHEMA_VERSION = 1


def schema() -> str:
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """Named queries of queries.sql: each starts at a ``-- name: x`` line."""
    text = resources.files(__package__).joinpath("queries.sql").read_text(encoding="utf-8")
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}
