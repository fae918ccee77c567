"""Typed events of a running job, and the in-process bus that carries them to ``BatchManager.watch``.

Events are a notification, not the source of truth (the store is): a subscriber that falls behind loses
the oldest events rather than slowing the engine down.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectSendStream

from .model import BatchStatus, JobStatus, RequestCounts


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
    """A shard's results are in the store: how many succeeded, failed for good, or go round again."""

    shard_id: int
    batch_id: str
    succeeded: int
    failed: int
    resubmitted: int


class RequestsResubmitted(Event):
    """Requests that failed in a retryable way were put into new shards (attempt > 1)."""

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
    async def subscribe(self, job_id: str | None = None) -> AsyncIterator[AsyncIterator[AnyEvent]]:
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
