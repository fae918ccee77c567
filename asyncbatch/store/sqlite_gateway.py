"""The gateway's half of the SQLite store (``GatewayStore``): keys, files and their chunks, batches, spend.

Its SQL is in ``sql/sqlite/gateway.sql``; its tables are in the same schema (version 3) as the jobs they point
at, so that a batch's spend is booked in the very transaction that ingests its results (``book_spend``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import aiosqlite
import msgspec

from ..model import BatchError, GatewayBatch, GatewayFile, GatewayUsage, RoutePrice, VirtualKey
from .sql import queries

_Q = queries("sqlite", "gateway.sql")
_json = msgspec.json.encode
_errors = msgspec.json.Decoder(list[BatchError])
_CHUNKS_READ = 8  # chunks of a file read per query while streaming it out


class SQLiteGateway:
    """Mixed into ``SQLiteStore``: the ``GatewayStore`` calls, on the store's connection and transactions."""

    if TYPE_CHECKING:
        def _tx(self) -> AbstractAsyncContextManager[aiosqlite.Connection]: ...
        async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]: ...

    # --- keys ----------------------------------------------------------------------------------------------

    async def add_key(self, key: VirtualKey) -> None:
        async with self._tx() as db:
            await db.execute(_Q["add_key"], {
                "token": key.token, "owner": key.owner, "team_id": key.team_id, "models": _json(key.models).decode(),
                "max_budget": key.max_budget, "metadata": _json(key.metadata).decode(), "created_at": key.created_at,
            })

    async def get_key(self, token: str) -> VirtualKey | None:
        rows = await self._read(_Q["get_key"], (token,))
        if not rows:
            return None
        token, owner, team_id, models, max_budget, metadata, created_at = rows[0]
        return VirtualKey(token=token, owner=owner, team_id=team_id, models=msgspec.json.decode(models),
                          max_budget=max_budget, metadata=msgspec.json.decode(metadata), created_at=created_at)

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        """Delete keys; returns the tokens that existed. What the keys made stays with their owner."""
        deleted = []
        async with self._tx() as db:
            for token in tokens:
                cur = await db.execute(_Q["delete_key"], (token,))
                if cur.rowcount:
                    deleted.append(token)
        return deleted

    async def key_usage(self, token: str) -> GatewayUsage:
        return _usage(await self._read(_Q["key_usage"], (token,)))

    async def batch_usage(self, batch_id: str) -> GatewayUsage:
        return _usage(await self._read(_Q["batch_usage"], (batch_id,)))

    @staticmethod
    async def book_spend(db: aiosqlite.Connection, shard_id: int, rids: Sequence[int]) -> None:
        """Book the usage and cost of the successes among a chunk's results, when the shard's job runs a
        gateway batch; called by ``ingest`` inside its transaction. One statement per chunk, not a trigger per
        row: a trigger made every ingestion (gateway or not) nearly twice as slow."""
        async with db.execute(_Q["batch_of_shard"], (shard_id,)) as cur:
            batch = await cur.fetchone()
        if batch is None:
            return
        await db.execute(_Q["book_spend"], {"batch_id": batch[0], "key_token": batch[1], "shard_id": shard_id,
                                            "rids": _json(list(rids)).decode()})

    async def set_prices(self, prices: Sequence[RoutePrice]) -> None:
        async with self._tx() as db:
            await db.executemany(_Q["set_price"], [(p.route, p.input, p.cached_input, p.output) for p in prices])

    # --- files ---------------------------------------------------------------------------------------------

    async def add_file(self, file: GatewayFile) -> None:
        async with self._tx() as db:
            await db.execute(_Q["add_file"], msgspec.structs.asdict(file))

    async def add_file_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        async with self._tx() as db:
            await db.execute(_Q["add_file_chunk"], (file_id, seq, data))

    async def file_uploaded(self, file_id: str, size: int, lines: int) -> None:
        async with self._tx() as db:
            await db.execute(_Q["file_uploaded"], (size, lines, file_id))

    async def get_file(self, file_id: str, owner: str) -> GatewayFile | None:
        rows = await self._read(_Q["get_file"], (file_id, owner))
        return _file(rows[0]) if rows else None

    async def list_files(
        self, owner: str, *, purpose: str | None = None, after: str | None = None, limit: int = 10_000,
        newest_first: bool = True,
    ) -> list[GatewayFile]:
        rows = await self._read(_Q["list_files"], {"owner": owner, "purpose": purpose, "after": after,
                                                   "limit": limit, "newest": int(newest_first)})
        return [_file(row) for row in rows]

    async def file_chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """An upload's content, a few chunks per read: no lock is held while the caller sends them."""
        after = -1
        while rows := await self._read(_Q["file_chunks"], (file_id, after, _CHUNKS_READ)):
            for seq, data in rows:
                yield bytes(data)
                after = int(seq)

    async def delete_file(self, file_id: str, owner: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute(_Q["delete_file"], (file_id, owner))
            if not cur.rowcount:
                return False
            await db.execute(_Q["delete_chunks"], (file_id,))
        return True

    async def drop_upload(self, file_id: str) -> None:
        """Remove an upload that did not finish (refused, or its client gone), with its chunks."""
        async with self._tx() as db:
            cur = await db.execute(_Q["delete_upload"], (file_id,))
            if cur.rowcount:
                await db.execute(_Q["delete_chunks"], (file_id,))

    async def drop_uploads(self, before: float) -> int:
        """Remove the uploads left unfinished (a process killed mid-upload) that began before ``before``."""
        stale = [str(row[0]) for row in await self._read(_Q["stale_uploads"], (before,))]
        for file_id in stale:
            await self.drop_upload(file_id)
        return len(stale)

    # --- batches -------------------------------------------------------------------------------------------

    async def add_batch(self, batch: GatewayBatch) -> None:
        async with self._tx() as db:
            await db.execute(_Q["add_batch"], {
                "id": batch.id, "owner": batch.owner, "key_token": batch.key_token,
                "input_file_id": batch.input_file_id, "endpoint": batch.endpoint,
                "completion_window": batch.completion_window,
                "metadata": _json(batch.metadata).decode() if batch.metadata is not None else None,
                "job_id": batch.job_id, "status": batch.status, "errors": _json(batch.errors).decode(),
                "created_at": batch.created_at,
            })

    async def get_batch(self, batch_id: str, owner: str) -> GatewayBatch | None:
        rows = await self._read(_Q["get_batch"], (batch_id, owner))
        return _batch(rows[0]) if rows else None

    async def list_batches(self, owner: str, *, after: str | None = None, limit: int = 20) -> list[GatewayBatch]:
        rows = await self._read(_Q["list_batches"], {"owner": owner, "after": after, "limit": limit})
        return [_batch(row) for row in rows]

    async def validating_batches(self) -> list[GatewayBatch]:
        return [_batch(row) for row in await self._read(_Q["validating_batches"])]

    async def batch_submitted(self, batch_id: str) -> None:
        async with self._tx() as db:
            await db.execute(_Q["batch_submitted"], (batch_id,))

    async def batch_failed(self, batch_id: str, errors: Sequence[BatchError], at: float) -> None:
        async with self._tx() as db:
            await db.execute(_Q["batch_failed"], (_json(errors).decode(), at, batch_id))

    async def batch_cancelling(self, batch_id: str, at: float) -> None:
        async with self._tx() as db:
            await db.execute(_Q["batch_cancelling"], (at, batch_id))

    async def batch_ended(self, batch: GatewayBatch, files: Sequence[GatewayFile]) -> bool:
        """Record how a submitted batch ended, with its output and error files, in one transaction; False
        (and nothing written) when another process recorded it first."""
        async with self._tx() as db:
            cur = await db.execute(_Q["batch_ended"], {
                "id": batch.id, "status": batch.status, "ended_at": batch.ended_at,
                "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id, "total": batch.total,
                "completed": batch.completed, "failed": batch.failed,
            })
            if not cur.rowcount:
                return False
            for file in files:
                await db.execute(_Q["add_file"], msgspec.structs.asdict(file))
        return True


def _usage(rows: list[sqlite3.Row]) -> GatewayUsage:
    requests, input_tokens, output_tokens, cached_tokens, cost = rows[0]
    return GatewayUsage(requests=requests, input_tokens=input_tokens, output_tokens=output_tokens,
                        cached_tokens=cached_tokens, cost=float(cost))


def _file(row: sqlite3.Row) -> GatewayFile:
    file_id, owner, purpose, filename, created_at, size, lines, status, batch_id, kind = row
    return GatewayFile(id=file_id, owner=owner, purpose=purpose, filename=filename, created_at=created_at,
                       bytes=size, lines=lines, status=status, batch_id=batch_id, kind=kind)


def _batch(row: sqlite3.Row) -> GatewayBatch:
    (batch_id, owner, key_token, input_file_id, endpoint, window, metadata, job_id, status, errors, created_at,
     cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed) = row
    return GatewayBatch(
        id=batch_id, owner=owner, key_token=key_token, input_file_id=input_file_id, endpoint=endpoint,
        completion_window=window, metadata=msgspec.json.decode(metadata) if metadata is not None else None,
        job_id=job_id, status=status, errors=_errors.decode(errors), created_at=created_at,
        cancelling_at=cancelling_at, ended_at=ended_at, output_file_id=output_file_id, error_file_id=error_file_id,
        total=total, completed=completed, failed=failed,
    )
