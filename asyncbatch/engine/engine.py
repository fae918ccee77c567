"""The engine: drives the jobs of a store through provider batches, for a while (``run``) or for good (``serve``).

One engine per process and store. It plans pending requests into shards (``planning``), leases them, and runs one
task per live shard (``ShardRunner``). ``run(job_ids)`` returns once those jobs have ended; ``serve()`` keeps
picking up every unfinished job, also jobs that other processes submit later, until it is cancelled (SIGTERM in
``asyncbatch worker``). Both leave the store consistent whenever they stop: every step is its own transaction,
and the leases of a stopped engine are given back so that another worker carries on at once.

Structured concurrency: a session is one task group holding a lease keeper, one task per job and one per shard.
A shard that keeps failing does not stop the others: ``run`` finishes what it can, then raises the first failure
with the job left resumable; ``serve`` tries the shard again after a pause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
import anyio.abc

from ..errors import AsyncBatchError, LeaseLostError, ProviderError
from ..events import EventBus, JobFinished, RequestsResubmitted
from ..failpoints import failpoint
from ..model import Job, JobStatus, Lease, ShardLimits, WireIdFn
from ..providers.base import Provider
from ..store.base import Store
from .config import EngineConfig
from .leases import new_owner, owner_is_dead
from .planning import Held, plan_shard
from .polling import Polls
from .pool import ProviderPool
from .retry import RetryStrategy
from .runner import EngineShared, ShardRunner

log = logging.getLogger("asyncbatch")

#: How long ``serve`` leaves a shard alone after it failed for good (a bad key, a provider down for long).
RETRY_FAILED_SHARD_AFTER = 60.0


class Engine:
    """Runs a store's jobs. ``pool`` builds each job's providers from what the job recorded (with keys from the
    environment unless the pool resolves them otherwise); ``events`` receives every event of the jobs it runs."""

    def __init__(
        self,
        store: Store,
        *,
        config: EngineConfig | None = None,
        retry: RetryStrategy | None = None,
        pool: ProviderPool | None = None,
        events: EventBus | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.config = config or EngineConfig()
        self.retry = retry or RetryStrategy()
        self.pool = pool or ProviderPool()
        self.events = events or EventBus()
        self.owner = owner or new_owner()
        self.spool_dir = self.config.spool_for(store.url)
        self.cancelled: set[str] = set()  # jobs whose cancel this process has seen (runners stop polling them)
        self._upload_slots = anyio.CapacityLimiter(self.config.uploads_at_once)
        # one shard ingests at a time: ingestion is store-bound, and memory stays flat however many shards end
        self._ingest_slots = anyio.CapacityLimiter(1)
        self._reconcile_lock = anyio.Lock()
        self._sessions: list[_Session] = []

    def __repr__(self) -> str:
        return f"Engine({self.store.url!r}, owner={self.owner!r})"

    def notify(self, job_id: str | None = None) -> None:
        """Something changed in this process (a job submitted or cancelled): look at the store again now."""
        if job_id is not None:
            self.cancelled.discard(job_id)
        for session in self._sessions:
            session.wake()

    def cancel_seen(self, job_id: str) -> None:
        """A job of this store was cancelled: runners ask the provider to stop its batches at the next poll, which
        comes at once."""
        self.cancelled.add(job_id)
        for session in self._sessions:
            session.shared.polls.nudge(job_id)
            session.wake()

    def provider(self, job: Job, route: str) -> Provider:
        return self.pool.get(job.spec(route))

    # --- the two modes ---------------------------------------------------------------------------------------

    async def run(self, job_ids: Sequence[str]) -> None:
        """Drive the named jobs to their end. A job that cannot end (a shard whose provider keeps failing) is
        left resumable in the store, and its error is raised once every other job has ended."""
        for job_id in job_ids:
            await self.store.get_job(job_id, with_counts=False)  # unknown ids fail now, not halfway
        try:
            async with self._session(give_up_after=self.config.give_up_after) as session, \
                    anyio.create_task_group() as jobs:
                for job_id in dict.fromkeys(job_ids):
                    jobs.start_soon(session.drive_job, job_id)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        session.raise_failures()

    async def serve(
        self, *, max_jobs: int | None = None, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Drive every unfinished job of the store, and every job submitted later, until cancelled.

        At most ``max_jobs`` jobs are driven at once (oldest first); the rest wait their turn. New jobs are
        noticed through the store (``wait_for_change``) or ``notify``, within ``job_poll_interval`` seconds.
        """
        try:
            async with self._session(give_up_after=None) as session, anyio.create_task_group() as jobs:
                task_status.started()
                await self._serve(session, jobs, max_jobs)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _serve(self, session: _Session, jobs: anyio.abc.TaskGroup, max_jobs: int | None) -> None:
        while True:
            woken = session.waiter(None)  # made before looking, so a wake while looking is not lost
            for job_id in await self.store.unfinished_job_ids():
                if job_id in session.jobs or (max_jobs is not None and len(session.jobs) >= max_jobs):
                    continue
                session.jobs.add(job_id)
                jobs.start_soon(session.drive_job, job_id)
            await session.wait_for_work(woken, self.config.job_poll_interval)

    @asynccontextmanager
    async def _session(self, *, give_up_after: float | None) -> AsyncIterator[_Session]:
        async with anyio.create_task_group() as tg:
            shared = EngineShared(
                store=self.store, config=self.config, retry=self.retry, events=self.events, spool_dir=self.spool_dir,
                give_up_after=give_up_after, upload_slots=self._upload_slots, ingest_slots=self._ingest_slots,
                polls=Polls(tg, self.config, self.cancelled), reconcile_lock=self._reconcile_lock,
                cancelled=self.cancelled,
            )
            session = _Session(self, shared, tg)
            self._sessions.append(session)
            tg.start_soon(session.keep_leases)
            try:
                yield session
            finally:
                self._sessions.remove(session)
                tg.cancel_scope.cancel()  # only the lease keeper and finished shard tasks are left

    # --- one step of one job ---------------------------------------------------------------------------------

    def limits_for(self, job: Job, route: str, shrink: Shrink) -> ShardLimits:
        limits = self.config.limits(self.provider(job, route).limits)
        if shrink.limits is None or route != shrink.route:
            return limits
        return ShardLimits(max_requests=min(limits.max_requests, shrink.limits.max_requests),
                           max_bytes=min(limits.max_bytes, shrink.limits.max_bytes))

    async def shrink(self, job_id: str) -> Shrink:
        """After a batch failed for its size or because the provider's queue was full, the job's next batches on
        that route are half the failed one (and after a full queue the job first waits ``capacity_hold``).

        Read from the store, so a restarted process (or another worker) holds and halves the same way.
        """
        last = await self.store.last_failed_with(job_id, self.retry.shrink_codes())
        if last is None:
            return Shrink()
        codes = {str(e.get("code")) for e in last.errors}
        held_until = (last.ended_at or 0.0) + self.config.capacity_hold
        if codes & self.retry.capacity_batch_errors and time.time() < held_until:
            return Shrink(hold=True)
        return Shrink(route=last.route, limits=ShardLimits(max_requests=max(1, last.request_count // 2),
                                                           max_bytes=max(1, last.bytes // 2)))


class Shrink(NamedTuple):
    """How a job plans after a batch failed for its size: not at all yet (``hold``), or with ``limits`` on
    ``route``."""

    hold: bool = False
    route: str | None = None
    limits: ShardLimits | None = None


@dataclass
class _Session:
    """One ``run`` or ``serve``: the task group its shards run in, and what it knows of them."""

    engine: Engine
    shared: EngineShared
    tg: anyio.abc.TaskGroup
    jobs: set[str] = field(default_factory=set)  # jobs driven by this session
    active: dict[int, str] = field(default_factory=dict)  # shard id -> job id, for shards with a task here
    failed: dict[int, tuple[str, float, Exception]] = field(default_factory=dict)  # shard -> (job, when, error)
    stuck: dict[str, Exception] = field(default_factory=dict)  # jobs ``run`` could not finish
    held: dict[str, float] = field(default_factory=dict)  # job -> since when its retries wait (monotonic)
    _waiters: dict[str | None, anyio.Event] = field(default_factory=dict)  # per job; None: the serve loop

    @property
    def store(self) -> Store:
        return self.engine.store

    def waiter(self, job_id: str | None) -> anyio.Event:
        """A fresh event for one waiter, set by the next ``wake``."""
        event = self._waiters[job_id] = anyio.Event()
        return event

    def wake(self) -> None:
        for event in self._waiters.values():
            event.set()

    async def wait_for_work(self, woken: anyio.Event, within: float) -> None:
        """Until the store or this process says something changed, or ``within`` seconds."""
        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                async def watch_store() -> None:
                    await self.store.wait_for_change(within)
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_store)
                await woken.wait()
                tg.cancel_scope.cancel()

    async def keep_leases(self) -> None:
        """Renew every lease this engine holds, a third of a lease apart, in one statement.

        A shard stays ours for as long as we live, also through a wait the runner cannot interrupt (a long
        Retry-After inside the HTTP layer, a slow upload): were the lease to lapse there, another worker
        would take the shard over, find no batch yet, create one, and our retry would create a second.
        """
        config = self.engine.config
        while True:
            await anyio.sleep(config.lease_seconds / 3)
            await self.store.renew_leases(self.engine.owner, config.lease_seconds)

    async def drive_job(self, job_id: str) -> None:
        """Step the job until it ends (or, in ``run``, until only failed shards are left)."""
        self.jobs.add(job_id)
        try:
            while True:
                woken = self.waiter(job_id)  # made before the step, so a wake during the step is not lost
                if await self.step(job_id):
                    return
                config = self.engine.config
                wait = min(config.lease_seconds / 3, 5.0)
                if job_id in self.held:  # step again when its retries' window ends
                    wait = min(wait, self.held[job_id] + config.retry_window - time.monotonic())
                with anyio.move_on_after(max(wait, 0.0)):
                    await woken.wait()
        finally:
            self.jobs.discard(job_id)
            self._waiters.pop(job_id, None)

    async def step(self, job_id: str) -> bool:
        """Plan, claim and finish what can be for one job; True once there is nothing more to do here."""
        engine, store = self.engine, self.store
        job = await store.get_job(job_id, with_counts=False)
        if job.status.is_terminal:
            return True
        if job.status is JobStatus.OPEN:
            await store.set_job_status(job_id, JobStatus.RUNNING)
        if job.cancel_requested:
            engine.cancelled.add(job_id)
            await store.cancel_pending(job_id)  # retryable failures that came back after the cancel
        elif not (shrink := await engine.shrink(job_id)).hold:

            def limits(route: str) -> ShardLimits:
                return engine.limits_for(job, route, shrink)

            def wire_id(route: str) -> WireIdFn:
                return engine.provider(job, route).wire_id

            # Each shard is started as soon as it is planned: its upload and batch overlap the planning of
            # the next, and its results can be ingested while the provider still runs later shards.
            hold = self._hold_retries(job_id)
            while planned := await plan_shard(store, job_id, limits, wire_id, hold_retries=hold):
                if isinstance(planned, Held):
                    self.held.setdefault(job_id, time.monotonic())
                    break
                self.held.pop(job_id, None)
                if planned.attempt > 1:
                    engine.events.publish(RequestsResubmitted(job_id=job_id, shard_id=planned.id,
                                                              count=planned.request_count, attempt=planned.attempt))
                    failpoint("after_resubmit_plan")
                await self.start_shards(job)
            if planned is None:
                self.held.pop(job_id, None)  # nothing is pending
        await self.start_shards(job)
        if job_id in self.active.values():
            return False
        if await store.job_has_live_work(job_id):
            failures = [error for shard_job, _, error in self.failed.values() if shard_job == job_id]
            others = await store.lease_holders(job_id) - {engine.owner}
            if failures and self.shared.give_up_after is not None and not others:
                self.stuck[job_id] = failures[0]  # ``run``: what is left cannot move now; report it
                return True
            return False
        final = JobStatus.CANCELLED if job.cancel_requested else JobStatus.DONE
        await store.set_job_status(job_id, final)
        log.info("job %s %s", job_id, final.value)
        engine.events.publish(JobFinished(job_id=job_id, status=final, counts=await store.counts(job_id)))
        return True

    async def start_shards(self, job: Job) -> None:
        """Lease the job's live shards that nobody holds (or whose holder died or lapsed); a task for each."""
        engine, config = self.engine, self.engine.config
        holders = await self.store.lease_holders(job.id)
        dead = {owner for owner in holders if owner != engine.owner and owner_is_dead(owner)}
        for lease in await self.store.claim_shards(job.id, engine.owner, config.lease_seconds, take_over=dead):
            if lease.shard_id in self.active or self._resting(lease.shard_id):
                await self.store.release(lease)
                continue
            self.active[lease.shard_id] = job.id
            self.tg.start_soon(self._shard_task, job, lease)

    def _hold_retries(self, job_id: str) -> bool:
        """Whether the job's failed requests waiting to be sent again wait a little longer for others: while other
        shards of the job are still out, for at most ``retry_window`` from the first time they waited, so that
        the failures of many batches go back together instead of as a batch each (retry dust). A job whose only
        work left is those requests does not wait at all."""
        window = self.engine.config.retry_window
        if window <= 0 or job_id not in self.active.values():
            return False
        since = self.held.get(job_id)
        return since is None or time.monotonic() - since < window

    def _resting(self, shard_id: int) -> bool:
        """A shard that failed here: ``run`` does not try it again, ``serve`` after a pause."""
        failed = self.failed.get(shard_id)
        if failed is None:
            return False
        return self.shared.give_up_after is not None or time.monotonic() - failed[1] < RETRY_FAILED_SHARD_AFTER

    async def _shard_task(self, job: Job, lease: Lease) -> None:
        try:
            shard = await self.store.get_shard(lease.shard_id)
            provider = self.engine.provider(job, shard.route)
            await ShardRunner(self.shared, provider, job, lease).drive()
            self.failed.pop(lease.shard_id, None)
        except LeaseLostError as exc:
            log.info("%s", exc)
        except ProviderError as exc:  # failed for good (or for longer than ``run`` waits): the others go on
            log.error("job %s, shard %s: %s (the job is left resumable)", job.id, lease.shard_id, exc)
            self.failed[lease.shard_id] = (job.id, time.monotonic(), exc)
        finally:
            self.active.pop(lease.shard_id, None)
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.release(lease)
                except AsyncBatchError as exc:
                    log.debug("releasing shard %s: %s", lease.shard_id, exc)
            self.wake()

    def raise_failures(self) -> None:
        """After ``run``: the first error of a job that could not end, naming the others."""
        if not self.stuck:
            return
        (first_job, first), *others = self.stuck.items()
        for job_id, error in others:
            log.error("job %s did not end: %s", job_id, error)
        if others:
            first.add_note(f"{len(others)} other job(s) did not end either: {', '.join(j for j, _ in others)}")
        first.add_note(f"job {first_job} is left resumable: run it again once the cause is fixed")
        raise first


def first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a caller should see from a failed task group: ours first, then anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((leaf for leaf in leaves if isinstance(leaf, AsyncBatchError)), leaves[0])
