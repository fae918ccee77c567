"""SQL of the store backends, in .sql files: ``<backend>/schema.sql`` (the newest schema, for a new store),
``<backend>/queries.sql`` (named queries) and ``<backend>/migrations/NNNN.sql`` (from version NNNN-1 to NNNN)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

#: The schema version this asyncbatch writes; both backends number their schemas alike.
SCHEMA_VERSION = 3


def _dir(backend: str) -> Traversable:
    return resources.files(__package__).joinpath(backend)


def schema(backend: str) -> str:
    return _dir(backend).joinpath("schema.sql").read_text(encoding="utf-8")


@cache
def queries(backend: str, file: str = "queries.sql") -> dict[str, str]:
    """Named queries of ``<backend>/<file>`` (``queries.sql``, or ``gateway.sql`` for the gateway's tables):
    each starts at a ``-- name: x`` line."""
    text = _dir(backend).joinpath(file).read_text(encoding="utf-8")
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {name: body.strip().rstrip(";") for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def migrations(backend: str, after: int) -> list[tuple[int, str]]:
    """(version, script) of every migration past ``after``, in order."""
    found = []
    folder = _dir(backend).joinpath("migrations")
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = re.fullmatch(r"(\d{4})\.sql", entry.name)
        if match and int(match.group(1)) > after:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    return sorted(found)


def statements(script: str) -> list[str]:
    """Split a script into statements (our scripts have no ``--`` or ``;`` inside literals)."""
    body = "\n".join(line.partition("--")[0] for line in script.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
