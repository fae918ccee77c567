"""The gateway's half of the PostgreSQL store (``GatewayStore``): keys, files and their chunks, batches, spend.

Its SQL is in ``sql/postgres/gateway.sql``; its tables are in the same schema as the jobs they point at, so that
a batch's spend is booked in the very transaction that ingests its results (``book_spend``). Rows read back are
decoded as the SQLite store's are: the two schemas agree column for column.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import psycopg

from ..model import BatchError, GatewayBatch, GatewayFile, GatewayUsage, RoutePrice, VirtualKey
from .sql import queries
from .sqlite_gateway import _batch, _file, _usage

_G = queries("postgres", "gateway.sql")
_T = TypeVar("_T")
_json = msgspec.json.encode
_CHUNKS_READ = 8  # chunks of a file read per query while streaming it out
Conn = psycopg.AsyncConnection[Any]


class PostgresGateway:
    """Mixed into ``PostgresStore``: the ``GatewayStore`` calls, through the store's retried transactions."""

    if TYPE_CHECKING:
        async def _tx(self, body: Callable[[Conn], Awaitable[_T]]) -> _T: ...
        async def _fetch_all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...

    async def _gw_write(self, name: str, params: dict[str, Any]) -> int:
        async def body(conn: Conn) -> int:
            return (await conn.execute(_G[name], params)).rowcount

        return await self._tx(body)

    # --- keys ----------------------------------------------------------------------------------------------

    async def add_key(self, key: VirtualKey) -> None:
        await self._gw_write("add_key", {
            "token": key.token, "owner": key.owner, "team_id": key.team_id, "models": _json(key.models).decode(),
            "max_budget": key.max_budget, "metadata": _json(key.metadata).decode(), "created_at": key.created_at,
        })

    async def get_key(self, token: str) -> VirtualKey | None:
        rows = await self._fetch_all(_G["get_key"], {"token": token})
        if not rows:
            return None
        token, owner, team_id, models, max_budget, metadata, created_at = rows[0]
        return VirtualKey(token=token, owner=owner, team_id=team_id, models=msgspec.json.decode(models),
                          max_budget=max_budget, metadata=msgspec.json.decode(metadata), created_at=created_at)

    async def delete_keys(self, tokens: Sequence[str]) -> list[str]:
        """Delete keys; returns the tokens that existed. What the keys made stays with their owner."""
        async def body(conn: Conn) -> set[str]:
            cur = await conn.execute(_G["delete_keys"], {"tokens": list(tokens)})
            return {str(row[0]) for row in await cur.fetchall()}

        existed = await self._tx(body)
        return [token for token in tokens if token in existed]

    async def key_usage(self, token: str) -> GatewayUsage:
        return _usage(await self._fetch_all(_G["key_usage"], {"key": token}))  # type: ignore[arg-type]

    async def batch_usage(self, batch_id: str) -> GatewayUsage:
        return _usage(await self._fetch_all(_G["batch_usage"], {"key": batch_id}))  # type: ignore[arg-type]

    @staticmethod
    async def book_spend(conn: Conn, shard_id: int, rids: Sequence[int]) -> None:
        """Book the usage and cost of the successes among a chunk's results, when the shard's job runs a
        gateway batch; called by ``ingest`` inside its transaction, one statement per chunk."""
        batch = await (await conn.execute(_G["batch_of_shard"], {"shard_id": shard_id})).fetchone()
        if batch is None:
            return
        await conn.execute(_G["book_spend"], {"batch_id": batch[0], "key_token": batch[1], "shard_id": shard_id,
                                              "rids": list(rids)})

    async def set_prices(self, prices: Sequence[RoutePrice]) -> None:
        await self._gw_write("set_prices", {
            "routes": [p.route for p in prices], "inputs": [p.input for p in prices],
            "cached": [p.cached_input for p in prices], "outputs": [p.output for p in prices],
        })

    # --- files ---------------------------------------------------------------------------------------------

    async def add_file(self, file: GatewayFile) -> None:
        await self._gw_write("add_file", msgspec.structs.asdict(file))

    async def add_file_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        await self._gw_write("add_file_chunk", {"file_id": file_id, "seq": seq, "data": data})

    async def file_uploaded(self, file_id: str, size: int, lines: int) -> None:
        await self._gw_write("file_uploaded", {"bytes": size, "lines": lines, "file_id": file_id})

    async def get_file(self, file_id: str, owner: str) -> GatewayFile | None:
        rows = await self._fetch_all(_G["get_file"], {"file_id": file_id, "owner": owner})
        return _file(rows[0]) if rows else None  # type: ignore[arg-type]

    async def list_files(
        self, owner: str, *, purpose: str | None = None, after: str | None = None, limit: int = 10_000,
        newest_first: bool = True,
    ) -> list[GatewayFile]:
        rows = await self._fetch_all(_G["list_files"], {"owner": owner, "purpose": purpose, "after": after,
                                                        "limit": limit, "newest": newest_first})
        return [_file(row) for row in rows]  # type: ignore[arg-type]

    async def file_chunks(self, file_id: str) -> AsyncIterator[bytes]:
        """An upload's content, a few chunks per read: no transaction stays open while the caller sends them."""
        after = -1
        while rows := await self._fetch_all(_G["file_chunks"], {"file_id": file_id, "after": after,
                                                                "limit": _CHUNKS_READ}):
            for seq, data in rows:
                yield bytes(data)
                after = int(seq)

    async def delete_file(self, file_id: str, owner: str) -> bool:
        async def body(conn: Conn) -> bool:
            if not (await conn.execute(_G["delete_file"], {"file_id": file_id, "owner": owner})).rowcount:
                return False
            await conn.execute(_G["delete_chunks"], {"file_id": file_id})
            return True

        return await self._tx(body)

    async def drop_upload(self, file_id: str) -> None:
        """Remove an upload that did not finish (refused, or its client gone), with its chunks."""
        async def body(conn: Conn) -> None:
            if (await conn.execute(_G["delete_upload"], {"file_id": file_id})).rowcount:
                await conn.execute(_G["delete_chunks"], {"file_id": file_id})

        await self._tx(body)

    async def drop_uploads(self, before: float) -> int:
        """Remove the uploads left unfinished (a process killed mid-upload) that began before ``before``."""
        stale = [str(row[0]) for row in await self._fetch_all(_G["stale_uploads"], {"before": before})]
        for file_id in stale:
            await self.drop_upload(file_id)
        return len(stale)

    # --- batches -------------------------------------------------------------------------------------------

    async def add_batch(self, batch: GatewayBatch) -> None:
        await self._gw_write("add_batch", {
            "id": batch.id, "owner": batch.owner, "key_token": batch.key_token,
            "input_file_id": batch.input_file_id, "endpoint": batch.endpoint,
            "completion_window": batch.completion_window,
            "metadata": _json(batch.metadata).decode() if batch.metadata is not None else None,
            "job_id": batch.job_id, "status": batch.status, "errors": _json(batch.errors).decode(),
            "created_at": batch.created_at,
        })

    async def get_batch(self, batch_id: str, owner: str) -> GatewayBatch | None:
        rows = await self._fetch_all(_G["get_batch"], {"batch_id": batch_id, "owner": owner})
        return _batch(rows[0]) if rows else None  # type: ignore[arg-type]

    async def list_batches(self, owner: str, *, after: str | None = None, limit: int = 20) -> list[GatewayBatch]:
        rows = await self._fetch_all(_G["list_batches"], {"owner": owner, "after": after, "limit": limit})
        return [_batch(row) for row in rows]  # type: ignore[arg-type]

    async def validating_batches(self) -> list[GatewayBatch]:
        return [_batch(row) for row in await self._fetch_all(_G["validating_batches"], {})]  # type: ignore[arg-type]

    async def batch_submitted(self, batch_id: str) -> None:
        await self._gw_write("batch_submitted", {"batch_id": batch_id})

    async def batch_failed(self, batch_id: str, errors: Sequence[BatchError], at: float) -> None:
        await self._gw_write("batch_failed", {"errors": _json(errors).decode(), "at": at, "batch_id": batch_id})

    async def batch_cancelling(self, batch_id: str, at: float) -> None:
        await self._gw_write("batch_cancelling", {"at": at, "batch_id": batch_id})

    async def batch_ended(self, batch: GatewayBatch, files: Sequence[GatewayFile]) -> bool:
        """Record how a submitted batch ended, with its output and error files, in one transaction; False
        (and nothing written) when another process recorded it first."""
        async def body(conn: Conn) -> bool:
            cur = await conn.execute(_G["batch_ended"], {
                "id": batch.id, "status": batch.status, "ended_at": batch.ended_at,
                "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id, "total": batch.total,
                "completed": batch.completed, "failed": batch.failed,
            })
            if not cur.rowcount:
                return False
            for file in files:
                await conn.execute(_G["add_file"], msgspec.structs.asdict(file))
            return True

        return await self._tx(body)
