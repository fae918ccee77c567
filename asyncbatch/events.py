"""Typed events of a running job, the in-process bus that carries them, and their synthesis from the store.

Events are a notification, not the source of truth (the store is): a subscriber that falls behind loses
the oldest events rather than slowing the engine down. A job driven by another process publishes nothing
here, so ``watch_job`` also polls the store and turns what changed into the same events (``JobTracker``);
the tracker remembers what it has yielded, so an event seen on the bus and in the store comes out once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .model import BatchStatus, Job, JobStatus, RequestCounts, Shard, ShardPhase

if TYPE_CHECKING:
    from .store import Store


class Event(msgspec.Struct, kw_only=True, tag_field="type", tag=lambda name: name):
    """Base of every event; ``type`` is the class name in JSON (webhooks, logs)."""

    job_id: str
    at: float = msgspec.field(default_factory=time.time)


class BatchCreated(Event):
    """A provider batch now exists for a shard (created, or adopted after a crash)."""

    shard_id: int
    batch_id: str
    request_count: int
    attempt: int
    adopted: bool = False


class BatchStatusChanged(Event):
    shard_id: int
    batch_id: str
    status: BatchStatus
    counts: dict[str, int]


class ResultsIngested(Event):
    """A shard's results are in the store: how many succeeded, failed for good, or go round again.

    When the event is synthesised from the store (the job runs in another process), the three numbers are
    the job's count changes since the previous poll, capped at the shard's size: exact when one shard lands
    per poll interval, approximate when several do.
    """

    shard_id: int
    batch_id: str
    succeeded: int
    failed: int
    resubmitted: int


class RequestsResubmitted(Event):
    """Requests that failed in a retryable way were put into a new shard (attempt > 1)."""

    shard_id: int
    count: int
    attempt: int


class JobFinished(Event):
    status: JobStatus
    counts: RequestCounts


AnyEvent = BatchCreated | BatchStatusChanged | ResultsIngested | RequestsResubmitted | JobFinished


class EventBus:
    """Fan-out of events to subscribers, each with a bounded buffer."""

    def __init__(self, buffer: int = 1000) -> None:
        self._buffer = buffer
        self._subscribers: list[tuple[str | None, MemoryObjectSendStream[AnyEvent]]] = []

    def publish(self, event: AnyEvent) -> None:
        for job_id, stream in list(self._subscribers):
            if job_id is not None and job_id != event.job_id:
                continue
            try:
                stream.send_nowait(event)
            except anyio.WouldBlock:
                pass  # a slow subscriber misses events; the store still has the truth
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove((job_id, stream))

    @asynccontextmanager
    async def subscribe(self, job_id: str | None = None) -> AsyncIterator[MemoryObjectReceiveStream[AnyEvent]]:
        """Events for one job (or all jobs) published while the context is open."""
        send, receive = anyio.create_memory_object_stream[AnyEvent](self._buffer)
        entry = (job_id, send)
        self._subscribers.append(entry)
        try:
            async with receive:
                yield receive
        finally:
            if entry in self._subscribers:
                self._subscribers.remove(entry)
            send.close()


class _SeenShard(msgspec.Struct):
    batch_id: str | None = None
    status: tuple[BatchStatus, dict[str, int]] | None = None
    ingested: bool = False


class JobTracker:
    """What a watcher has yielded for one job; turns store snapshots into the events not yet yielded.

    ``absorb`` takes an event from the bus (False: already yielded from the store), ``diff`` compares a
    fresh snapshot with what is known and returns the missing events.
    """

    def __init__(self, job: Job, shards: list[Shard]) -> None:
        self.finished = False
        self._shards: dict[int, _SeenShard] = {}
        self._resubmitted: set[int] = set()  # shards whose RequestsResubmitted was yielded
        for shard in shards:  # the baseline: what happened before the watch started is not news
            self._shards[shard.id] = _SeenShard(
                batch_id=shard.batch_id, ingested=shard.phase is ShardPhase.INGESTED,
                status=(shard.batch_status, shard.provider_counts) if shard.batch_status else None,
            )

    def absorb(self, event: AnyEvent) -> bool:
        """Record an event from the bus; False when the store already produced it."""
        if isinstance(event, JobFinished):
            new = not self.finished
            self.finished = True
            return new
        if isinstance(event, RequestsResubmitted):
            new = event.shard_id not in self._resubmitted
            self._resubmitted.add(event.shard_id)
            return new
        seen = self._shards.setdefault(event.shard_id, _SeenShard())
        if isinstance(event, BatchCreated):
            new = seen.batch_id is None
            seen.batch_id = event.batch_id
        elif isinstance(event, BatchStatusChanged):
            new = seen.status != (event.status, event.counts)
            seen.status = (event.status, event.counts)
        else:
            new = not seen.ingested
            seen.ingested = True
        return new

    def diff(
        self, job: Job, shards: list[Shard], tallies: dict[int, tuple[int, int, int]] | None = None
    ) -> list[AnyEvent]:
        """The events that explain how the store moved since the last snapshot, in causal order: what
        happened to known shards and their ingestion first, then the shards planned since (resubmissions)."""
        known = [s for s in shards if s.id in self._shards]
        new = [s for s in shards if s.id not in self._shards]
        events: list[AnyEvent] = []
        landed: list[Shard] = []
        for shard in known:
            landed += self._moves(job, shard, events)
        later: list[AnyEvent] = []
        for shard in new:
            self._shards[shard.id] = _SeenShard()
            if shard.attempt > 1 and shard.id not in self._resubmitted:
                self._resubmitted.add(shard.id)
                later.append(RequestsResubmitted(job_id=job.id, shard_id=shard.id, count=shard.request_count,
                                                 attempt=shard.attempt))
            landed += self._moves(job, shard, later)
        ingested = self._ingested(job, landed, tallies or {})
        events += [e for e in ingested if e.shard_id in self._ids(known)] + later
        events += [e for e in ingested if e.shard_id not in self._ids(known)]
        if job.status.is_terminal and not self.finished:
            self.finished = True
            events.append(JobFinished(job_id=job.id, status=job.status, counts=job.counts))
        return events

    @staticmethod
    def _ids(shards: list[Shard]) -> set[int]:
        return {shard.id for shard in shards}

    def _moves(self, job: Job, shard: Shard, events: list[AnyEvent]) -> list[Shard]:
        """Append the creation and status change of one shard not yet told; [shard] if it has landed."""
        seen = self._shards[shard.id]
        if shard.batch_id is None:
            return []
        if seen.batch_id is None:
            seen.batch_id = shard.batch_id
            events.append(BatchCreated(job_id=job.id, shard_id=shard.id, batch_id=shard.batch_id,
                                       request_count=shard.request_count, attempt=shard.attempt))
        if shard.batch_status is not None and seen.status != (shard.batch_status, shard.provider_counts):
            seen.status = (shard.batch_status, shard.provider_counts)
            events.append(BatchStatusChanged(job_id=job.id, shard_id=shard.id, batch_id=shard.batch_id,
                                             status=shard.batch_status, counts=shard.provider_counts))
        if shard.phase is ShardPhase.INGESTED and not seen.ingested:
            seen.ingested = True
            return [shard]
        return []

    def newly_ingested(self, shards: list[Shard]) -> list[int]:
        """Shards the store shows ingested that no event has reported yet (their tallies are needed)."""
        seen = self._shards
        return [s.id for s in shards if s.phase is ShardPhase.INGESTED and not (s.id in seen and seen[s.id].ingested)]

    @staticmethod
    def _ingested(job: Job, landed: list[Shard], tallies: dict[int, tuple[int, int, int]]) -> list[ResultsIngested]:
        """Shards that reached ``ingested`` since the last snapshot, with their members' tallies."""
        events: list[ResultsIngested] = []
        for shard in landed:
            succeeded, failed, again = tallies.get(shard.id, (0, 0, shard.request_count))
            assert shard.batch_id is not None
            events.append(ResultsIngested(job_id=job.id, shard_id=shard.id, batch_id=shard.batch_id,
                                          succeeded=succeeded, failed=failed, resubmitted=again))
        return events


async def watch_job(store: Store, bus: EventBus, job_id: str, *, poll_interval: float = 1.0) -> AsyncIterator[AnyEvent]:
    """Events of a job whoever drives it, ending with ``JobFinished``.

    Events published on ``bus`` (the job runs in this process) come at once; every ``poll_interval`` seconds
    the store is read and changes made by other processes become events too.
    """
    async with bus.subscribe(job_id) as events:
        job = await store.get_job(job_id)
        if job.status.is_terminal:
            yield JobFinished(job_id=job_id, status=job.status, counts=job.counts)
            return
        tracker = JobTracker(job, await store.job_shards(job_id))
        next_poll = time.monotonic() + poll_interval
        while not tracker.finished:
            event: AnyEvent | None = None
            with anyio.move_on_after(max(0.0, next_poll - time.monotonic())):
                event = await events.receive()
            if event is not None:
                if tracker.absorb(event):
                    yield event
                continue
            next_poll = time.monotonic() + poll_interval
            job = await store.get_job(job_id)
            shards = await store.job_shards(job_id)
            tallies = {shard_id: await store.shard_tally(shard_id) for shard_id in tracker.newly_ingested(shards)}
            for synthesised in tracker.diff(job, shards, tallies):
                yield synthesised


def describe(event: AnyEvent) -> str:
    """One line for a log: what happened, to which job and batch."""
    if isinstance(event, BatchCreated):
        how = "adopted after a crash" if event.adopted else "created"
        return (f"job {event.job_id}: batch {event.batch_id} {how} for shard {event.shard_id} "
                f"({event.request_count} requests, attempt {event.attempt})")
    if isinstance(event, BatchStatusChanged):
        counts = ", ".join(f"{k} {v}" for k, v in event.counts.items() if v)
        return f"job {event.job_id}: batch {event.batch_id} {event.status.value}" + (f" ({counts})" if counts else "")
    if isinstance(event, ResultsIngested):
        return (f"job {event.job_id}: results of batch {event.batch_id} stored: {event.succeeded} succeeded, "
                f"{event.failed} failed, {event.resubmitted} to send again")
    if isinstance(event, RequestsResubmitted):
        return (f"job {event.job_id}: {event.count} requests sent again in shard {event.shard_id} "
                f"(attempt {event.attempt})")
    c = event.counts
    return (f"job {event.job_id} {event.status.value}: {c.completed} succeeded, {c.failed} failed, "
            f"{c.cancelled} cancelled of {c.total}")


async def log_events(bus: EventBus, logger: logging.Logger, *also: Callable[[AnyEvent], None]) -> None:
    """Log every event of ``bus`` at INFO, one line each (a headless worker's story at ``-v``), and hand each to
    ``also``; runs until cancelled."""
    async with bus.subscribe() as events:
        async for event in events:
            logger.info("%s", describe(event))
            for hook in also:
                hook(event)
