"""The store contract: what every backend's ``Store`` must do, call by call, whatever database is behind it.

Run on every backend of ``conftest.BACKENDS``. Two store objects made by ``stores()`` are two connections to one
database, as two workers (or machines) are: concurrency is tested with them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asyncbatch.engine.planning import plan_shard
from asyncbatch.errors import (
    BatchClaimedError,
    DuplicateCustomIdError,
    JobConflictError,
    JobNotFoundError,
    LeaseLostError,
    StoreError,
    ValidationError,
)
from asyncbatch.model import (
    BatchError,
    BatchStatus,
    Job,
    JobStatus,
    Lease,
    NewRequest,
    Outcome,
    ProviderSpec,
    RemoteBatch,
    RequestState,
    ResultRow,
    Settlement,
    ShardLimits,
    ShardPhase,
)
from asyncbatch.store import Store
from tests.helpers import plan_all
from tests.store.conftest import StoreFactory

LIMITS = ShardLimits(max_requests=1000, max_bytes=10**9)
OWNER_A, OWNER_B = "host-a:1:aaaa", "host-b:2:bbbb"


def make_job(job_id: str = "job_1", **fields: Any) -> Job:
    now = time.time()
    values: dict[str, Any] = {
        "id": job_id, "provider": "openai", "base_url": None, "endpoint": "*", "completion_window": "24h",
        "max_attempts": 3, "metadata": {"team": "search"}, "status": JobStatus.OPEN, "created_at": now,
        "updated_at": now, **fields,
    }
    return Job(**values)


def requests(n: int, *, prefix: str = "c", routes: Sequence[str] = ("openai",), models: Sequence[str] = ("m",),
             size: int = 100) -> list[NewRequest]:
    return [NewRequest(custom_id=f"{prefix}{i}", route=routes[i % len(routes)], url="/v1/chat/completions",
                       model=models[i % len(models)], body=b'{"i":%d}' % i, size=size, line=i + 1)
            for i in range(n)]


async def chunks(*parts: list[NewRequest]) -> AsyncIterator[list[NewRequest]]:
    for part in parts:
        yield part


def wire(custom_id: str, rid: int, token: str) -> str:
    return f"{token[:8]}-{rid}"


async def add_job(store: Store, n: int = 10, job_id: str = "job_1", **fields: Any) -> Job:
    job = make_job(job_id, **fields)
    await store.create_job(job, chunks(requests(n)))
    return job


async def one_shard(store: Store, n: int = 10, job_id: str = "job_1") -> tuple[Any, Lease]:
    await add_job(store, n, job_id)
    (shard,) = await plan_all(store, job_id, LIMITS, wire)
    (lease,) = await store.claim_shards(job_id, OWNER_A, 60)
    return shard, lease


def remote(batch_id: str = "batch_1", status: BatchStatus = BatchStatus.IN_PROGRESS, **fields: Any) -> RemoteBatch:
    return RemoteBatch(id=batch_id, status=status, raw_status=status.value, **fields)


def row(rid: int, attempt: int = 1, *, ok: bool = True, state: RequestState | None = None) -> ResultRow:
    if state is None:
        state = RequestState.SUCCEEDED if ok else RequestState.FAILED
    return ResultRow(rid=rid, attempt=attempt, outcome=Outcome.SUCCEEDED if ok else Outcome.ERRORED, state=state,
                     status_code=200 if ok else 400, body=b'{"ok":%d}' % rid, input_tokens=3, output_tokens=4,
                     model="m", error_code=None if ok else "invalid", error_message=None if ok else "bad")


async def submitted(store: Store, n: int = 10) -> tuple[Any, Lease, dict[str, tuple[int, int]]]:
    shard, lease = await one_shard(store, n)
    await store.shard_uploaded(lease, "file-1")
    await store.shard_creating(lease)
    await store.shard_submitted(lease, remote())
    return shard, lease, await store.member_requests(shard.id)


async def ended(store: Store, n: int = 10) -> tuple[Any, Lease, dict[str, tuple[int, int]]]:
    shard, lease, members = await submitted(store, n)
    await store.shard_polled(lease, remote(status=BatchStatus.COMPLETED, output_file_id="file-out"))
    return shard, lease, members


RETRY = Settlement(state=RequestState.PENDING, error_code="batch_expired", error_message="expired", max_attempts=3)


# --- jobs ---------------------------------------------------------------------------------------------------


async def test_a_job_and_its_requests_are_stored_together_and_read_back(store: Store) -> None:
    job = make_job(routes={"openai": ProviderSpec(name="openai", base_url="http://x/v1", options={"a": [1]}),
                           "anthropic": ProviderSpec(name="anthropic", key_env="MY_KEY")},
                   owner="team-a", idempotency_key="k1")

    async def filled() -> AsyncIterator[list[NewRequest]]:
        yield requests(3)
        job.content_hash = "digest-1"  # known once the last chunk has passed: written then

    assert await store.create_job(job, filled()) == 3
    stored = await store.get_job("job_1")
    assert stored.routes == job.routes and stored.owner == "team-a" and stored.content_hash == "digest-1"
    assert stored.metadata == {"team": "search"} and stored.status is JobStatus.OPEN
    assert stored.counts.total == 3 and stored.counts.pending == 3 and stored.counts.completed == 0
    assert (await store.get_job("job_1", with_counts=False)).counts.total == 0
    with pytest.raises(JobNotFoundError):
        await store.get_job("nope")


async def test_a_failing_chunk_stores_nothing(store: Store) -> None:
    async def broken() -> AsyncIterator[list[NewRequest]]:
        yield requests(5)
        raise ValidationError("line 6: bad", line=6)

    with pytest.raises(ValidationError):
        await store.create_job(make_job(), broken())
    assert await store.list_jobs() == []
    with pytest.raises(DuplicateCustomIdError) as info:
        await store.create_job(make_job(), chunks(requests(3), requests(2)))
    assert (info.value.line, info.value.custom_id) == (1, "c0")
    assert await store.list_jobs() == []


async def test_a_taken_job_id_or_idempotency_key_is_a_conflict_before_any_request_is_read(store: Store) -> None:
    await add_job(store, 2, idempotency_key="key-1", owner="t1")

    async def never() -> AsyncIterator[list[NewRequest]]:
        raise AssertionError("read although the job id is taken")
        yield []

    with pytest.raises(JobConflictError):
        await store.create_job(make_job("job_1"), never())
    with pytest.raises(JobConflictError):
        await store.create_job(make_job("job_2", idempotency_key="key-1", owner="t1"), never())
    await add_job(store, 1, "job_3", idempotency_key="key-1", owner="t2")  # another tenant's key space
    found = await store.find_job(idempotency_key="key-1", owner="t1")
    assert found is not None and found.id == "job_1"
    assert await store.find_job(idempotency_key="key-1") is None


async def test_jobs_are_found_by_content_hash_and_by_provider_batch_id(store: Store) -> None:
    for job_id in ("job_1", "job_2"):
        await store.create_job(make_job(job_id, content_hash="same"), chunks(requests(2)))
    first = await store.find_job(content_hash="same")
    assert first is not None and first.id == "job_1"  # the first one submitted with these requests
    (_shard,) = await plan_all(store, "job_2", LIMITS, wire)
    (lease,) = await store.claim_shards("job_2", OWNER_A, 60)
    await store.shard_uploaded(lease, "f")
    await store.shard_creating(lease)
    await store.shard_submitted(lease, remote("batch_xyz"))
    by_batch = await store.find_job(batch_id="batch_xyz")
    assert by_batch is not None and by_batch.id == "job_2"
    assert await store.find_job(batch_id="batch_nope") is None


async def test_listing_by_owner_and_unfinished_jobs(store: Store) -> None:
    await add_job(store, 1, "job_1", owner="t1")
    await add_job(store, 1, "job_2", owner="t2")
    await add_job(store, 1, "job_3")
    await store.set_job_status("job_2", JobStatus.DONE)
    assert [j.id for j in await store.list_jobs()] == ["job_1", "job_2", "job_3"]
    assert [j.id for j in await store.list_jobs(owner="t1")] == ["job_1"]
    assert [j.id for j in await store.list_jobs(unfinished=True)] == ["job_1", "job_3"]
    assert await store.unfinished_job_ids() == ["job_1", "job_3"]
    assert await store.set_job_status("job_2", JobStatus.DONE) is False  # no change


async def test_a_route_can_be_repointed(store: Store) -> None:
    await add_job(store, 1)
    spec = ProviderSpec(name="openai", base_url="http://new/v1", key_env="OTHER_KEY")
    await store.set_route("job_1", "openai", spec)
    assert (await store.get_job("job_1")).routes["openai"] == spec


# --- planning -----------------------------------------------------------------------------------------------


async def test_planning_groups_by_route_endpoint_and_model_in_input_order(store: Store) -> None:
    await store.create_job(make_job(), chunks(requests(12, routes=("openai", "anthropic"), models=("a", "b"))))
    planned = await plan_all(store, "job_1", ShardLimits(max_requests=2, max_bytes=10**6), wire)
    groups = [(p.route, p.model, p.request_count) for p in planned]
    assert groups == [("anthropic", "b", 2), ("anthropic", "b", 2), ("anthropic", "b", 2), ("openai", "a", 2),
                      ("openai", "a", 2), ("openai", "a", 2)]
    counts = await store.counts("job_1")
    assert counts.in_flight == 12 and counts.pending == 0
    members = await store.member_requests(planned[0].id)
    assert all(w.startswith(planned[0].token[:8]) for w in members) and len(members) == 2
    assert await plan_all(store, "job_1", LIMITS, wire) == []


async def test_a_planning_session_commits_all_or_nothing(store: Store) -> None:
    await add_job(store, 5)
    with pytest.raises(RuntimeError):
        async with store.planning("job_1") as session:
            rows = await session.pending(10)
            assert [r.custom_id for r in rows] == [f"c{i}" for i in range(5)]
            assert rows[0].route == "openai" and rows[0].attempts == 0 and rows[0].size == 100
            raise RuntimeError("the engine failed half-way")
    assert (await store.counts("job_1")).pending == 5 and await store.job_shards("job_1") == []


async def test_two_connections_planning_one_job_at_once_never_share_a_request(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    await first.create_job(make_job(), chunks(requests(300)))
    planned: list[Any] = []

    async def planner(store: Store) -> None:
        while shard := await plan_shard(store, "job_1", lambda route: ShardLimits(max_requests=7, max_bytes=10**6),
                                        lambda route: wire):
            planned.append(shard)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(planner, first)
        tg.start_soon(planner, second)
    members: list[int] = []
    for shard in planned:
        members += [rid for rid, _ in (await first.member_requests(shard.id)).values()]
    assert sorted(members) == sorted(set(members)) and len(members) == 300
    assert (await first.counts("job_1")).in_flight == 300


# --- leases -------------------------------------------------------------------------------------------------


async def test_claims_give_each_shard_to_one_connection_with_a_fencing_token(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    await first.create_job(make_job(), chunks(requests(40)))
    await plan_all(first, "job_1", ShardLimits(max_requests=4, max_bytes=10**6), wire)
    got: dict[str, list[Lease]] = {}

    async def claim(store: Store, owner: str) -> None:
        got[owner] = await store.claim_shards("job_1", owner, 60)

    async with anyio.create_task_group() as tg:
        tg.start_soon(claim, first, OWNER_A)
        tg.start_soon(claim, second, OWNER_B)
    ids = [lease.shard_id for leases in got.values() for lease in leases]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 10
    assert await first.lease_holders("job_1") == {o for o, leases in got.items() if leases}
    assert await first.claim_shards("job_1", OWNER_A, 60) == []  # held (its own ones are never claimed again)


async def test_a_lease_expires_by_the_store_clock_and_the_old_holder_can_change_nothing(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    shard, old = await one_shard(first, 3)
    assert await second.claim_shards("job_1", OWNER_B, 60) == []
    await first.renew_lease(old, 0.2)  # the holder is paused past this
    await anyio.sleep(0.5)
    assert await first.lease_holders("job_1") == set()
    (new,) = await second.claim_shards("job_1", OWNER_B, 60)
    assert new.shard_id == shard.id and new.token != old.token
    for change in (first.shard_uploaded(old, "f"), first.renew_lease(old, 60), first.shard_note(old, "x")):
        with pytest.raises(LeaseLostError):
            await change
    await first.release(old)  # a stale release gives nothing away
    assert await first.lease_holders("job_1") == {OWNER_B}
    await second.shard_uploaded(new, "f")
    assert (await first.get_shard(shard.id)).phase is ShardPhase.UPLOADED


async def test_a_new_claim_by_the_same_owner_fences_the_old_grant(stores: StoreFactory) -> None:
    first = await stores()
    _shard, old = await one_shard(first, 2)
    await first.release(old)
    (again,) = await first.claim_shards("job_1", OWNER_A, 60)
    assert again.token != old.token
    with pytest.raises(LeaseLostError):
        await first.shard_uploaded(old, "f")


async def test_holders_found_dead_are_taken_over_at_once_others_only_after_expiry(store: Store) -> None:
    await add_job(store, 8)
    await plan_all(store, "job_1", ShardLimits(max_requests=4, max_bytes=10**6), wire)
    leases = await store.claim_shards("job_1", OWNER_A, 60)
    assert len(leases) == 2
    assert await store.claim_shards("job_1", OWNER_B, 60) == []
    taken = await store.claim_shards("job_1", OWNER_B, 60, take_over=[OWNER_A])
    assert sorted(lease.shard_id for lease in taken) == sorted(lease.shard_id for lease in leases)
    await store.renew_leases(OWNER_B, 60)
    for lease in taken:
        await store.renew_lease(lease, 60)


# --- shard phases -------------------------------------------------------------------------------------------


async def test_a_shard_moves_through_its_phases_only_in_order(store: Store) -> None:
    shard, lease = await one_shard(store, 3)
    with pytest.raises(LeaseLostError):
        await store.shard_creating(lease)  # not uploaded yet
    await store.shard_uploaded(lease, "file-1")
    await store.shard_creating(lease)
    creating = await store.get_shard(shard.id)
    assert creating.phase is ShardPhase.CREATING and creating.file_id == "file-1" and creating.creating_at
    await store.shard_submitted(lease, remote(created_at=1700000000.0, counts={"total": 3}))
    with pytest.raises(LeaseLostError):
        await store.shard_submitted(lease, remote("batch_2"))
    await store.shard_polled(lease, remote(status=BatchStatus.IN_PROGRESS, counts={"total": 3, "completed": 1}))
    seen = await store.get_shard(shard.id)
    assert seen.phase is ShardPhase.SUBMITTED and seen.provider_counts == {"total": 3, "completed": 1}
    assert seen.batch_id == "batch_1" and seen.provider_created_at == 1700000000.0
    errors = [BatchError(code="x", message="y", line=2)]
    await store.shard_polled(lease, remote(status=BatchStatus.FAILED, errors=errors, error_file_id="file-err"))
    done = await store.get_shard(shard.id)
    assert done.phase is ShardPhase.ENDED and done.batch_status is BatchStatus.FAILED and done.ended_at
    assert done.error_file_id == "file-err" and done.errors == [{"code": "x", "message": "y", "line": 2}]
    assert [s.id for s in await store.job_shards("job_1")] == [shard.id]


async def test_one_provider_batch_belongs_to_one_shard(store: Store) -> None:
    await add_job(store, 4)
    await plan_all(store, "job_1", ShardLimits(max_requests=2, max_bytes=10**6), wire)
    first, second = await store.claim_shards("job_1", OWNER_A, 60)
    for lease in (first, second):
        await store.shard_uploaded(lease, "f")
        await store.shard_creating(lease)
    await store.shard_submitted(first, remote("batch_same"))
    with pytest.raises(BatchClaimedError):
        await store.shard_submitted(second, remote("batch_same"))
    assert (await store.get_shard(second.shard_id)).phase is ShardPhase.CREATING
    assert "batch_same" in await store.recorded_batch_ids(since=0)


async def test_a_gone_input_file_sends_the_shard_back_to_be_uploaded_and_notes_are_kept(store: Store) -> None:
    shard, lease = await one_shard(store, 2)
    await store.shard_uploaded(lease, "file-1")
    await store.shard_creating(lease)
    await store.shard_note(lease, "HTTP 503: overloaded")
    assert (await store.get_shard(shard.id)).last_error == "HTTP 503: overloaded"
    await store.shard_reupload(lease, "input file file-1 was gone")
    back = await store.get_shard(shard.id)
    assert back.phase is ShardPhase.PLANNED and back.file_id is None and "gone" in (back.last_error or "")
    await store.shard_uploaded(lease, "file-2")
    assert (await store.get_shard(shard.id)).last_error is None


async def test_a_vanished_batch_is_rebound_or_abandoned_with_its_members_settled(store: Store) -> None:
    shard, lease, _members = await submitted(store, 4)
    await store.shard_rebind(lease, remote("batch_again"))
    assert (await store.get_shard(shard.id)).batch_id == "batch_again"
    await store.shard_abandoned(lease, [BatchError(code="batch_vanished", message="gone")], RETRY)
    gone = await store.get_shard(shard.id)
    assert gone.phase is ShardPhase.ABANDONED and gone.errors[0]["code"] == "batch_vanished"
    counts = await store.counts("job_1")
    assert counts.pending == 4 and counts.in_flight == 0
    with pytest.raises(LeaseLostError):
        await store.shard_polled(lease, remote("batch_again"))


async def test_abandoning_settles_members_as_told(store: Store) -> None:
    for job_id, settle, expect in (
        ("job_a", Settlement(state=RequestState.FAILED, error_code="rejected", error_message="no"), "failed"),
        ("job_b", Settlement(state=RequestState.PENDING, error_code="too_large", error_message="big", refund=True),
         "pending"),
        ("job_c", Settlement(state=RequestState.CANCELLED, error_code="cancelled", error_message="user"), "cancelled"),
    ):
        await add_job(store, 2, job_id)
        await plan_all(store, job_id, LIMITS, wire)
        (lease,) = await store.claim_shards(job_id, OWNER_A, 60)
        await store.shard_abandoned(lease, [], settle)
        assert getattr(await store.counts(job_id), expect) == 2
    (again,) = await plan_all(store, "job_b", LIMITS, wire)
    assert again.attempt == 1  # a refund gives the attempt back


# --- ingestion ----------------------------------------------------------------------------------------------


async def test_ingesting_in_chunks_then_finishing_settles_every_member(store: Store) -> None:
    shard, lease, members = await ended(store, 6)
    rids = sorted(rid for rid, _ in members.values())
    await store.ingest(lease, [row(rids[0]), row(rids[1], ok=False)], [("stranger", b'{"x":1}')])
    assert (await store.counts("job_1")).failed == 1  # a final failure is settled with its chunk
    await store.ingest(lease, [row(rids[2])], finish=RETRY, succeeded=rids[:1] + rids[2:3])
    counts = await store.counts("job_1")
    assert (counts.completed, counts.failed, counts.pending, counts.in_flight) == (2, 1, 3, 0)
    assert (await store.get_shard(shard.id)).phase is ShardPhase.INGESTED
    assert await store.shard_tally(shard.id) == (2, 1, 3)
    assert await store.orphans("job_1") == [(shard.id, "stranger", b'{"x":1}')]
    with pytest.raises(LeaseLostError):
        await store.ingest(lease, [row(rids[3])])  # the shard is done


async def test_ingesting_again_after_a_crash_is_harmless(store: Store) -> None:
    _shard, lease, members = await ended(store, 5)
    rids = sorted(rid for rid, _ in members.values())
    rows = [row(rid) for rid in rids]
    await store.ingest(lease, rows[:3])  # the crash came after this chunk
    await store.ingest(lease, rows)  # the run that resumes reads everything again
    await store.ingest(lease, [], finish=RETRY, succeeded=rids)
    audit = await store.audit("job_1")
    assert all(len(attempts) == 1 for attempts in audit.successes.values()) and len(audit.successes) == 5
    assert (await store.counts("job_1")).completed == 5


async def test_a_worker_that_lost_the_shard_ingests_nothing(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    _shard, old, members = await ended(first, 3)
    await first.renew_lease(old, 0.1)
    await anyio.sleep(0.3)
    (new,) = await second.claim_shards("job_1", OWNER_B, 60)
    with pytest.raises(LeaseLostError):
        await first.ingest(old, [row(rid) for rid, _ in members.values()])
    assert await first.final_results("job_1") == []
    await second.ingest(new, [row(rid) for rid, _ in members.values()], finish=RETRY,
                        succeeded=[rid for rid, _ in members.values()])
    assert (await first.counts("job_1")).completed == 3


# --- results ------------------------------------------------------------------------------------------------


async def test_results_page_by_request_and_are_consumed_once(store: Store) -> None:
    _shard, lease, members = await ended(store, 25)
    rids = sorted(rid for rid, _ in members.values())
    await store.ingest(lease, [row(rid) for rid in rids], finish=RETRY, succeeded=rids)
    page = await store.final_results("job_1", limit=10)
    assert len(page) == 10 and [r.rid for r in page] == sorted(r.rid for r in page)
    assert page[0].custom_id == "c0" and page[0].batch_id == "batch_1" and page[0].route == "openai"
    assert page[0].body == b'{"ok":%d}' % page[0].rid and page[0].input_tokens == 3
    rest = await store.final_results("job_1", after_rid=page[-1].rid, limit=100)
    assert len(rest) == 15
    await store.acknowledge("job_1", [r.custom_id for r in page])
    assert len(await store.final_results("job_1", unconsumed=True)) == 15
    every = await store.attempt_results("job_1", after=(0, 0), limit=100)
    assert [(r.rid, r.attempt) for r in every] == [(rid, 1) for rid in rids]


async def test_audit_and_stats_describe_the_store(store: Store) -> None:
    shard, lease, members = await ended(store, 4)
    rids = sorted(rid for rid, _ in members.values())
    await store.ingest(lease, [row(rids[0]), row(rids[1], ok=False)], finish=RETRY, succeeded=rids[:1])
    audit = await store.audit("job_1")
    assert audit.integrity == "ok" and audit.tokens == [shard.token]
    assert audit.requests["c0"] == (RequestState.SUCCEEDED, 1) and audit.requests["c1"] == (RequestState.FAILED, 1)
    assert audit.requests["c2"] == (RequestState.PENDING, 1)
    assert set(audit.wire_ids) == {"c0", "c1", "c2", "c3"} and audit.successes == {"c0": [1]}
    stats = await store.stats()
    assert stats.jobs == {"open": 1} and stats.shards == {"ingested": 1}
    assert stats.requests == {"pending": 2, "in_flight": 0, "failed": 1, "cancelled": 0, "succeeded": 1}
    await store.ping()


async def test_cancelling_a_job_ends_what_was_not_sent_and_reports_what_may_run(store: Store) -> None:
    await add_job(store, 6)
    await plan_all(store, "job_1", ShardLimits(max_requests=2, max_bytes=10**6), wire)
    leases = await store.claim_shards("job_1", OWNER_A, 60)
    await store.shard_uploaded(leases[0], "f")
    await store.shard_creating(leases[0])
    await store.shard_submitted(leases[0], remote())
    maybe_running = await store.request_cancel("job_1")
    assert [s.id for s in maybe_running] == [leases[0].shard_id]
    job = await store.get_job("job_1")
    assert job.cancel_requested and job.counts.cancelled == 4 and job.counts.in_flight == 2
    assert await store.job_has_live_work("job_1")


async def test_wait_for_change_wakes_on_another_connections_commit(stores: StoreFactory) -> None:
    first, second = await stores(), await stores()
    started = time.monotonic()
    await first.wait_for_change(0.3)  # nothing happens: it times out
    assert time.monotonic() - started >= 0.25

    async def submit_later() -> None:
        await anyio.sleep(0.2)
        await add_job(second, 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit_later)
        started = time.monotonic()
        await first.wait_for_change(10)
    assert time.monotonic() - started < 5


async def test_spool_rows_stream_in_chunks_without_holding_the_store(store: Store) -> None:
    shard, _lease = await one_shard(store, 10)
    sizes = []
    async for rows in store.spool_rows(shard.id, chunk=3):
        sizes.append(len(rows))
        assert all(url == "/v1/chat/completions" and body.startswith(b'{"i":') for _, url, body in rows)
        assert await store.counts("job_1")  # the store answers while a chunk is being handled
    assert sizes == [3, 3, 3, 1]
    gen = store.spool_rows(shard.id, chunk=3)
    await gen.__anext__()
    await gen.aclose()  # a consumer that stops half-way leaves nothing locked
    await store.set_job_status("job_1", JobStatus.RUNNING)


# --- moving a store -----------------------------------------------------------------------------------------


async def test_a_dump_loaded_into_a_new_store_carries_everything_but_the_leases(stores: StoreFactory) -> None:
    source = await stores()
    shard, lease, members = await ended(source, 30)
    rids = sorted(rid for rid, _ in members.values())
    await source.ingest(lease, [row(rids[0]), row(rids[1], ok=False)], [("stranger", b"{}")], finish=RETRY,
                        succeeded=rids[:1])
    await add_job(source, 5, "job_2", owner="t1", idempotency_key="k")
    await source.request_cancel("job_2")
    await add_job(source, 12, "job_3")
    await plan_all(source, "job_3", ShardLimits(max_requests=5, max_bytes=10**6), wire)
    (held, *_rest) = await source.claim_shards("job_3", OWNER_A, 60)
    await source.shard_uploaded(held, "file-9")
    await source.acknowledge("job_1", ["c0"])
    target = await stores(other=True)
    counts = await target.load(source.dump(chunk=7))  # pages smaller than a table: keyset paging is used
    assert counts["requests"] == 47 and counts["shards"] == 4 and counts["orphan_results"] == 1
    for job_id in ("job_1", "job_2", "job_3"):
        assert await target.get_job(job_id) == await source.get_job(job_id)
        assert await target.job_shards(job_id) == await source.job_shards(job_id)
        assert await target.final_results(job_id) == await source.final_results(job_id)
        assert await target.audit(job_id) == await source.audit(job_id)
    assert await target.orphans("job_1") == [(shard.id, "stranger", b"{}")]
    unconsumed = await target.final_results("job_1", unconsumed=True)
    assert [r.custom_id for r in unconsumed] == ["c1"] == [r.custom_id for r in await source.final_results(
        "job_1", unconsumed=True)]
    assert await target.lease_holders("job_3") == set()  # the copy's shards are anybody's
    (again,) = [lease for lease in await target.claim_shards("job_3", OWNER_B, 60) if lease.shard_id == held.shard_id]
    assert again.token > held.token  # fencing tokens go on from the copied ones
    await add_job(target, 2, "job_4")  # new ids go on after the copied ones
    (new_shard,) = await plan_all(target, "job_4", LIMITS, wire)
    assert new_shard.id > max(s.id for s in await source.job_shards("job_3"))
    with pytest.raises(StoreError, match="holds jobs already"):
        await target.load(source.dump())


async def test_a_planning_conflict_stores_nothing_and_the_next_plan_takes_the_requests(store: Store) -> None:
    """A backend whose planning session was cut off and found its requests taken raises PlanningConflictError
    (PostgreSQL, after a lost connection): the engine plans again instead of stopping the run."""
    from asyncbatch.errors import PlanningConflictError

    await add_job(store, 4)
    original = store.planning
    conflicts = [1]

    def cut_off(job_id: str) -> Any:
        if conflicts:
            conflicts.pop()
            raise PlanningConflictError("planning was cut off and its requests were taken")
        return original(job_id)

    store.planning = cut_off  # type: ignore[method-assign]
    assert await plan_shard(store, "job_1", lambda route: LIMITS, lambda route: wire) is None
    assert (await store.counts("job_1")).pending == 4
    again = await plan_shard(store, "job_1", lambda route: LIMITS, lambda route: wire)
    assert again is not None and again.request_count == 4
