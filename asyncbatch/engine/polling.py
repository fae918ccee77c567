"""Polling, shared by every batch of a provider: the statuses of many batches from one list page, within one budget.

A runner whose batch is submitted does not poll it: it watches it (``Poller.watch``) and is woken when its status
or counts change. The provider's ``Poller`` decides when and how to look:

* **when**: each batch is due again ``poll_interval`` after a change of phase (validating, in progress,
  finalizing), later after each look that saw no new phase (x1.5, up to ``max_poll_interval``), or about when
  its counts say it will be done, whichever comes first;
* **how**: where the provider lists batches (``listing``), one page read newest first gives the status of a
  hundred or a thousand batches, so the due batches are looked for page by page, and every batch watched that a
  page shows is refreshed with it; a batch the listing does not show (not listed yet, or the provider has no
  listing) is read alone; and a batch the listing shows ended is read alone once, for what only a read of the
  batch itself may carry (its output files), unless the provider's pages hold whole batches (``listing_is_whole``:
  OpenAI, Anthropic, Mistral);
* **within a budget**: all of it together makes at most ``poll_rate`` calls a second to the provider, however
  many batches are in flight.

10,000 batches in flight cost about a hundred page reads a sweep instead of ten thousand reads.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ..errors import BadRequestError, NotFoundError, ProviderError
from ..metrics import POLLS
from ..model import BatchStatus, RemoteBatch
from ..providers.base import Provider
from .config import EngineConfig

log = logging.getLogger("asyncbatch")

#: A batch created this long (provider's clock) before the oldest one looked for ends a sweep: listings are
#: newest first, and a batch cannot be older than its own creation.
LIST_MARGIN = 60.0
#: How much of its interval a batch may be brought forward by, to be looked at in the same sweep as another.
COALESCE = 0.5

Listing = Callable[[], AsyncGenerator[list[RemoteBatch], None]]


@dataclass(eq=False)
class Watch:
    """One runner's view of one batch: ``next`` returns its next status that differs from the last one returned
    (every status, once its job is cancelled), or raises the provider's error for it."""

    batch_id: str
    job_id: str
    created_at: float  # on the provider's clock (0: unknown)
    since: float  # monotonic: when the watch began
    due: float = 0.0
    interval: float = 0.0
    status: BatchStatus | None = None  # what the poller last saw
    delivered: tuple[BatchStatus, dict[str, int]] | None = None  # what the runner was last given
    _ready: anyio.Event = field(default_factory=anyio.Event)
    _found: RemoteBatch | ProviderError | None = None

    async def next(self) -> RemoteBatch:
        await self._ready.wait()
        self._ready = anyio.Event()
        found, self._found = self._found, None
        if isinstance(found, ProviderError):
            raise found
        assert found is not None
        return found

    def _tell(self, found: RemoteBatch | ProviderError) -> None:
        self._found = found
        self._ready.set()


class Poller:
    """Polls the watched batches of one provider (see the module's docstring); ``run`` is its loop."""

    def __init__(self, provider: Provider, config: EngineConfig, cancelled: set[str]) -> None:
        self.provider = provider
        self.config = config
        self.cancelled = cancelled
        self._listing: Listing | None = getattr(provider, "listing", None)
        self._listing_is_whole: bool = getattr(provider, "listing_is_whole", False)
        self._watches: dict[str, Watch] = {}
        self._changed = anyio.Event()  # a watch began, or was brought forward
        self._calls = _Budget(config.poll_rate)

    @contextlib.contextmanager
    def watch(self, batch_id: str, job_id: str, created_at: float) -> Iterator[Watch]:
        """Watch a batch (looked at at once, then as it is due) for as long as the block lasts."""
        watch = Watch(batch_id=batch_id, job_id=job_id, created_at=created_at, since=time.monotonic(),
                      interval=self.config.poll_interval)
        self._watches[batch_id] = watch
        self._changed.set()
        try:
            yield watch
        finally:
            if self._watches.get(batch_id) is watch:
                del self._watches[batch_id]

    def nudge(self, job_id: str) -> None:
        """The job was cancelled: look at its batches now (their runners ask the provider to stop them)."""
        for watch in self._watches.values():
            if watch.job_id == job_id:
                watch.due = 0.0
        self._changed.set()

    async def run(self) -> None:
        while True:
            changed = self._changed = anyio.Event()
            now = time.monotonic()
            if not self._watches:
                await changed.wait()
                continue
            first = min(watch.due for watch in self._watches.values())
            if first > now:
                with anyio.move_on_after(first - now):
                    await changed.wait()
                continue
            await self._poll(now)

    async def _poll(self, now: float) -> None:
        """Look at every batch due (and those nearly due), by listing where the provider lists, else one by one."""
        due = {w.batch_id: w for w in self._watches.values() if w.due <= now + COALESCE * w.interval}
        ended: list[Watch] = []
        if self._listing is not None:
            try:
                await self._sweep(due, ended)
            except (BadRequestError, NotFoundError) as exc:  # a host without the listing: read one by one
                log.info("%s: listing batches failed (%s); polling them one by one", self.provider.name, exc)
                self._listing = None
            except ProviderError as exc:  # the provider is failing: reading each batch would fail as well
                now = time.monotonic()
                for watch in due.values():
                    self._schedule(watch, now)
                    watch._tell(exc)
                due.clear()
        for watch in [*due.values(), *ended]:
            if self._watches.get(watch.batch_id) is not watch:
                continue  # its runner stopped watching meanwhile
            await self._calls.take()
            POLLS.labels(self.provider.name).inc()
            try:
                self._seen(watch, await self.provider.retrieve(watch.batch_id), time.monotonic())
            except ProviderError as exc:
                self._schedule(watch, time.monotonic())
                watch._tell(exc)

    async def _sweep(self, due: dict[str, Watch], ended: list[Watch]) -> None:
        """Read listing pages, newest first, until every batch in ``due`` was seen (those seen leave it) or the
        pages reach back past the oldest of them; a batch seen ended goes to ``ended``, to be read alone."""
        assert self._listing is not None
        known = [w.created_at for w in due.values()]
        oldest = min(known) if known and all(known) else None  # a batch of unknown age: read to the end
        pages = self._listing()
        async with contextlib.aclosing(pages):
            await self._calls.take()
            async for page in pages:
                POLLS.labels(self.provider.name).inc()
                now = time.monotonic()
                for remote in page:
                    watch = self._watches.get(remote.id)
                    if watch is None:
                        continue
                    due.pop(remote.id, None)
                    if remote.status.is_terminal and watch.status is not remote.status and not self._listing_is_whole:
                        ended.append(watch)  # read alone, for what only the batch itself carries
                        self._schedule(watch, now)
                    else:
                        self._seen(watch, remote, now)
                if not due or (oldest is not None and page[-1].created_at < oldest - LIST_MARGIN):
                    return
                await self._calls.take()

    def _seen(self, watch: Watch, remote: RemoteBatch, now: float) -> None:
        """Record what was seen of a batch, schedule its next look, and wake its runner if there is news."""
        if remote.status is not watch.status:
            watch.interval = self.config.poll_interval  # a new phase: look again soon
        else:
            watch.interval = min(watch.interval * 1.5, self.config.max_poll_interval)
            left = _time_left(remote.counts, now - watch.since)
            if left is not None:  # about when its counts say it will be done, if that is sooner
                watch.interval = max(self.config.poll_interval, min(watch.interval, left))
        watch.status = remote.status
        if remote.created_at:
            watch.created_at = remote.created_at
        self._schedule(watch, now, keep_interval=True)
        seen = (remote.status, remote.counts)
        if seen != watch.delivered or watch.job_id in self.cancelled:
            watch.delivered = seen
            watch._tell(remote)

    def _schedule(self, watch: Watch, now: float, *, keep_interval: bool = False) -> None:
        if not keep_interval:
            watch.interval = min(watch.interval * 1.5, self.config.max_poll_interval)
        watch.due = now + watch.interval * (0.8 + 0.4 * random.random())


def _time_left(counts: dict[str, int], elapsed: float) -> float | None:
    """Seconds until a batch is done at the pace its counts moved since it was first watched, when they say."""
    if "total" in counts:  # OpenAI's and Mistral's counts: total, completed, failed
        total, done = counts["total"], counts.get("completed", 0) + counts.get("failed", 0)
    elif "processing" in counts:  # Anthropic's: processing, and what ended each way
        total = sum(counts.values())
        done = total - counts["processing"]
    else:
        return None
    if not 0 < done < total or elapsed <= 0:
        return None
    return (total - done) * elapsed / done


class _Budget:
    """At most ``rate`` calls a second: a call waits for its turn."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = 0.0

    async def take(self) -> None:
        now = time.monotonic()
        turn = max(now, self._next)
        self._next = turn + self._gap
        if turn > now:
            await anyio.sleep(turn - now)


class Polls:
    """The pollers of one engine session, one per provider, each running in the session's task group."""

    def __init__(self, tg: anyio.abc.TaskGroup, config: EngineConfig, cancelled: set[str]) -> None:
        self._tg = tg
        self._config = config
        self._cancelled = cancelled
        self._pollers: dict[int, Poller] = {}

    def poller(self, provider: Provider) -> Poller:
        found = self._pollers.get(id(provider))
        if found is None or found.provider is not provider:
            found = self._pollers[id(provider)] = Poller(provider, self._config, self._cancelled)
            self._tg.start_soon(found.run)
        return found

    def nudge(self, job_id: str) -> None:
        for poller in self._pollers.values():
            poller.nudge(job_id)
