"""The ``GatewayStore`` contract: the batch gateway's tables, on every backend of ``conftest.BACKENDS``.

Every read of a client's object names its owner; spend is booked by the store itself in the transaction that
ingests a result, once per (request, attempt), and only for jobs a gateway batch owns.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from asyncbatch.model import BatchError, GatewayBatch, GatewayFile, RoutePrice, VirtualKey
from asyncbatch.store import Store
from tests.store.conftest import StoreFactory
from tests.store.test_contract import RETRY, add_job, ended, row


def gw(store: Store) -> Any:
    return store  # every backend implements GatewayStore too


def new_file(file_id: str, owner: str = "team:a", **fields: Any) -> GatewayFile:
    values: dict[str, Any] = {"purpose": "batch", "filename": f"{file_id}.jsonl", "created_at": time.time(), **fields}
    return GatewayFile(id=file_id, owner=owner, **values)


def new_batch(batch_id: str, job_id: str, owner: str = "team:a", key: str = "tok-a", **fields: Any) -> GatewayBatch:
    values: dict[str, Any] = {"status": "submitted", "created_at": time.time(), **fields}
    return GatewayBatch(id=batch_id, owner=owner, key_token=key, input_file_id="file-1",
                        endpoint="/v1/chat/completions", completion_window="24h", metadata={"p": "1"},
                        job_id=job_id, **values)


async def test_keys_are_added_found_by_token_and_deleted(store: Store) -> None:
    key = VirtualKey(token="t" * 64, owner="team:a", team_id="a", models=["m"], max_budget=2.5,
                     metadata={"x": [1]}, created_at=1.0)
    await gw(store).add_key(key)
    assert await gw(store).get_key("t" * 64) == key
    assert await gw(store).delete_keys(["t" * 64, "unknown"]) == ["t" * 64]
    assert await gw(store).get_key("t" * 64) is None


async def test_an_upload_is_invisible_until_finished_and_its_chunks_come_back_in_order(store: Store) -> None:
    g = gw(store)
    await g.add_file(new_file("file-1", status="uploading"))
    for seq in range(20):
        await g.add_file_chunk("file-1", seq, b"%d;" % seq)
    assert await g.get_file("file-1", "team:a") is None and await g.list_files("team:a") == []
    await g.file_uploaded("file-1", 100, 20)
    found = await g.get_file("file-1", "team:a")
    assert found is not None and (found.bytes, found.lines, found.status) == (100, 20, "processed")
    assert b"".join([c async for c in g.file_chunks("file-1")]) == b"".join(b"%d;" % i for i in range(20))
    assert await g.get_file("file-1", "team:b") is None  # another owner: nothing
    assert not await g.delete_file("file-1", "team:b")
    assert await g.delete_file("file-1", "team:a")
    assert await g.get_file("file-1", "team:a") is None and [c async for c in g.file_chunks("file-1")] == []


async def test_unfinished_uploads_are_dropped_with_their_chunks(store: Store) -> None:
    g = gw(store)
    await g.add_file(new_file("file-old", status="uploading"))
    await g.add_file_chunk("file-old", 0, b"x")
    await g.add_file(new_file("file-done"))
    assert await g.drop_uploads(before=time.time() + 1) == 1
    assert [c async for c in g.file_chunks("file-old")] == []
    assert [f.id for f in await g.list_files("team:a")] == ["file-done"]


async def test_files_are_listed_per_owner_and_paged_after_an_id(store: Store) -> None:
    g = gw(store)
    for i in range(5):
        await g.add_file(new_file(f"file-{i}", purpose="batch" if i % 2 == 0 else "batch_output"))
    await g.add_file(new_file("file-b", owner="team:b"))
    assert [f.id for f in await g.list_files("team:a")] == ["file-4", "file-3", "file-2", "file-1", "file-0"]
    assert [f.id for f in await g.list_files("team:a", after="file-3", limit=2)] == ["file-2", "file-1"]
    assert [f.id for f in await g.list_files("team:a", newest_first=False, after="file-1")] == \
        ["file-2", "file-3", "file-4"]
    assert [f.id for f in await g.list_files("team:a", purpose="batch")] == ["file-4", "file-2", "file-0"]
    assert await g.list_files("team:a", after="file-b") == []  # another owner's id is no cursor
    assert [f.id for f in await g.list_files("team:b")] == ["file-b"]


async def test_batches_are_owned_listed_and_end_once_with_their_files(stores: StoreFactory) -> None:
    first, second = gw(await stores()), gw(await stores())
    for i in range(3):
        await first.add_batch(new_batch(f"batch_{i}", f"job_{i}"))
    await first.add_batch(new_batch("batch_b", "job_b", owner="team:b"))
    assert [b.id for b in await first.list_batches("team:a")] == ["batch_2", "batch_1", "batch_0"]
    assert [b.id for b in await first.list_batches("team:a", after="batch_2", limit=1)] == ["batch_1"]
    assert await first.get_batch("batch_b", "team:a") is None
    stored = await first.get_batch("batch_0", "team:a")
    assert stored == new_batch("batch_0", "job_0", created_at=stored.created_at)
    await first.batch_cancelling("batch_0", 5.0)
    await first.batch_cancelling("batch_0", 9.0)  # the first cancel's time stays
    out = new_file("file-out", kind="output", purpose="batch_output", batch_id="batch_0", lines=3, bytes=30)
    ended_batch = new_batch("batch_0", "job_0", status="completed", ended_at=10.0, output_file_id="file-out",
                            total=4, completed=3, failed=1, created_at=stored.created_at)
    results = []

    async def end(store: Any, files: list[GatewayFile]) -> None:
        results.append(await store.batch_ended(ended_batch, files))

    async with anyio.create_task_group() as tg:  # two processes see the job end at once
        tg.start_soon(end, first, [out])
        tg.start_soon(end, second, [new_file("file-twin", kind="output", batch_id="batch_0")])
    assert sorted(results) == [False, True]
    again = await second.get_batch("batch_0", "team:a")
    assert (again.status, again.total, again.completed, again.failed, again.cancelling_at) == ("completed", 4, 3, 1,
                                                                                                 5.0)
    kept = [f.id for f in await second.list_files("team:a")]
    assert len(kept) == 1 and kept[0] in ("file-out", "file-twin") and again.output_file_id == "file-out"


async def test_a_batch_being_created_is_found_then_submitted_or_failed(store: Store) -> None:
    g = gw(store)
    await g.add_batch(new_batch("batch_1", "job_1", status="validating"))
    await g.add_batch(new_batch("batch_2", "job_2", status="validating"))
    assert [b.id for b in await g.validating_batches()] == ["batch_1", "batch_2"]
    await g.batch_submitted("batch_1")
    errors = [BatchError(code="model_not_found", message="no", line=3, param="body.model")]
    await g.batch_failed("batch_2", errors, 7.0)
    await g.batch_submitted("batch_2")  # a failed batch stays failed
    assert (await g.get_batch("batch_1", "team:a")).status == "submitted"
    failed = await g.get_batch("batch_2", "team:a")
    assert (failed.status, failed.errors, failed.ended_at) == ("failed", errors, 7.0)
    assert await g.validating_batches() == []


async def test_spend_is_booked_per_billed_result_in_the_ingest_and_only_once(store: Store) -> None:
    g = gw(store)
    await g.set_prices([RoutePrice(route="openai", input=0.001, cached_input=0.0005, output=0.002)])
    await g.add_batch(new_batch("batch_1", "job_1"))
    _shard, lease, members = await ended(store, 4)  # job_1, route "openai"
    rids = sorted(rid for rid, _ in members.values())
    await store.ingest(lease, [row(rids[0]), row(rids[1], ok=False)])
    await store.ingest(lease, [row(rids[0]), row(rids[1], ok=False), row(rids[2])])  # again, after a crash
    await store.ingest(lease, [row(rids[3])], finish=RETRY, succeeded=[rids[0], rids[2], rids[3]])
    usage = await g.batch_usage("batch_1")
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (3, 9, 12)  # 3 in, 4 out each
    assert usage.cost == pytest.approx(3 * (3 * 0.001 + 4 * 0.002))
    assert await g.key_usage("tok-a") == usage
    assert (await g.key_usage("tok-b")).cost == 0


async def test_jobs_without_a_gateway_batch_book_nothing(store: Store) -> None:
    g = gw(store)
    await g.set_prices([RoutePrice(route="openai", input=1.0, cached_input=1.0, output=1.0)])
    _shard, lease, members = await ended(store, 2)
    rids = sorted(rid for rid, _ in members.values())
    await store.ingest(lease, [row(rid) for rid in rids], finish=RETRY, succeeded=rids)
    await add_job(store, 1, "job_2")
    assert (await g.key_usage("tok-a")).requests == 0
