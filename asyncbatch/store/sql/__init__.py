"""SQL of the store backends, in .sql files: ``<backend>/schema.sql`` (the newest schema, for a new store),
``<backend>/queries.sql`` (named queries) and ``<backend>/migrations/NNNN.sql`` (from version NNNN-1 to NNNN).

``TABLES`` describes the tables both backends share, column for column: what ``db copy`` moves. The few
statements that walk every table (a dump, page by page) are made from it rather than written once per table."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, NamedTuple

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


class Table(NamedTuple):
    """One table as ``db copy`` moves it between backends: its columns in order, the kind of each value
    (``text``, ``int``, ``float``, ``bytes``, ``bool``: how both backends agree on it), and its primary key, by
    which a dump pages. Leases are not moved: a copied store starts with every shard free."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


def _columns(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, kind) for name, _, kind in (item.strip().partition(":") for item in spec.split(",")))


#: Every table of a store, parents first (a load inserts them in this order).
TABLES = (
    Table("jobs", _columns(
        "id:text, provider:text, base_url:text, provider_options:text, endpoint:text, completion_window:text, "
        "max_attempts:int, metadata:text, status:text, cancel_requested:bool, created_at:float, updated_at:float, "
        "routes:text, owner:text, idempotency_key:text, content_hash:text"), ("id",)),
    Table("requests", _columns(
        "rid:int, job_id:text, custom_id:text, route:text, url:text, model:text, body:bytes, size:int, state:text, "
        "attempts:int, shard_id:int, error_code:text, error_message:text, consumed:bool"), ("rid",)),
    Table("shards", _columns(
        "id:int, job_id:text, attempt:int, token:text, phase:text, endpoint:text, model:text, request_count:int, "
        "bytes:int, file_id:text, batch_id:text, batch_status:text, output_file_id:text, error_file_id:text, "
        "provider_counts:text, errors:text, created_at:float, creating_at:float, ended_at:float, route:text, "
        "lease_token:int, provider_created_at:float, results_expire_at:float, last_error:text"), ("id",)),
    Table("shard_members", _columns("shard_id:int, wire_id:text, rid:int, attempt:int"), ("shard_id", "wire_id")),
    Table("results", _columns(
        "rid:int, attempt:int, shard_id:int, outcome:text, status_code:int, body:bytes, error_code:text, "
        "error_message:text, input_tokens:int, output_tokens:int, cached_tokens:int, model:text, request_id:text, "
        "line_id:text"), ("rid", "attempt")),
    Table("orphan_results", _columns("shard_id:int, wire_id:text, line:bytes"), ("shard_id", "wire_id")),
    # the batch gateway's (schema 3)
    Table("gateway_keys", _columns(
        "token:text, owner:text, team_id:text, models:text, max_budget:float, metadata:text, created_at:float"),
        ("token",)),
    Table("gateway_files", _columns(
        "seq:int, id:text, owner:text, purpose:text, filename:text, bytes:int, lines:int, status:text, "
        "created_at:float, batch_id:text, kind:text"), ("seq",)),
    Table("gateway_file_chunks", _columns("file_id:text, seq:int, data:bytes"), ("file_id", "seq")),
    Table("gateway_batches", _columns(
        "seq:int, id:text, owner:text, key_token:text, input_file_id:text, endpoint:text, completion_window:text, "
        "metadata:text, job_id:text, status:text, errors:text, created_at:float, cancelling_at:float, "
        "ended_at:float, output_file_id:text, error_file_id:text, total:int, completed:int, failed:int"), ("seq",)),
    Table("gateway_prices", _columns("route:text, input:float, cached_input:float, output:float"), ("route",)),
    Table("gateway_spend", _columns(
        "rid:int, attempt:int, batch_id:text, key_token:text, input_tokens:int, output_tokens:int, "
        "cached_tokens:int, cost:float"), ("rid", "attempt")),
)


def portable(table: Table, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows as every backend takes them. SQLite keeps values as they were given: a flag as 0/1, a JSON text
    written as bytes (``msgspec.json.encode``) as a blob."""
    convert = [bool if kind == "bool" else _text if kind == "text" else None for _, kind in table.columns]
    return [tuple(v if f is None or v is None else f(v) for f, v in zip(convert, row, strict=True)) for row in rows]


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def dump_query(table: Table, *, first: bool, marker: str) -> str:
    """A page of ``table`` in key order: the first one, or the one after a key. ``marker`` is the backend's
    named placeholder, formatted with a name (each key column's, and ``limit``)."""
    where = "" if first else \
        f" WHERE ({', '.join(table.key)}) > ({', '.join(marker.format(k) for k in table.key)})"
    return (f"SELECT {', '.join(table.names)} FROM {table.name}{where} ORDER BY {', '.join(table.key)} "
            f"LIMIT {marker.format('limit')}")


def insert_query(table: Table, placeholder: str) -> str:
    """An insert of one row of ``table``, every column in order, with the backend's positional placeholder."""
    values = ", ".join([placeholder] * len(table.columns))
    return f"INSERT INTO {table.name} ({', '.join(table.names)}) VALUES ({values})"
