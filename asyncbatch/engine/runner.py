"""ShardRunner: one leased shard driven through its phases, each committed before the next network step.

planned -> uploaded -> creating -> submitted -> ended -> ingested (or abandoned). A process killed at any
instant leaves the shard in a phase from which another runner continues (design.md, invariants 2-8): the
input file is rebuilt from the store, a batch that may exist is looked for before creating one, and results
are upserted, so ingesting again is harmless. Every change names the runner's lease: a runner that lost its
shard to another worker changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from ..errors import BadRequestError, BatchClaimedError, NotFoundError, ProviderError, StoreError
from ..events import BatchCreated, BatchStatusChanged, EventBus, ResultsIngested
from ..failpoints import failpoint
from ..http import WAITING
from ..jsonl import SpoolWriter
from ..model import (
    BatchError,
    BatchStatus,
    Job,
    Lease,
    RemoteBatch,
    RequestState,
    ResultLine,
    ResultRow,
    Shard,
    ShardInfo,
    ShardPhase,
)
from ..providers.base import Provider
from ..store.base import Store
from .config import EngineConfig
from .polling import Polls
from .retry import RetryStrategy, StepRetry

log = logging.getLogger("asyncbatch")

_LOOKUP_LINES = 1000  # result lines whose members are looked up in one query while ingesting
# An ingest chunk also ends when its result bodies reach this size: 10,000 embeddings of 3,072 dimensions would
# be 600 MB, and memory must not depend on what the model answered.
INGEST_CHUNK_BYTES = 16 << 20
RECONCILE_HORIZON = 7 * 86400.0  # batch ids recorded this long before a shard's create are excluded from find()
# Answers that say a create made nothing: no need to look for the batch before trying again.
_NOTHING_CREATED = frozenset({400, 401, 403, 404, 409, 413, 422, 429, 503, 529})


@dataclass
class EngineShared:
    """What every runner of one engine shares, stated once instead of reached through a back-reference."""

    store: Store
    config: EngineConfig
    retry: RetryStrategy
    events: EventBus
    spool_dir: Path
    give_up_after: float | None  # ``run`` gives up a failing step after this long; ``serve`` never does
    upload_slots: anyio.CapacityLimiter
    ingest_slots: anyio.CapacityLimiter
    polls: Polls  # the session's pollers, one per provider
    reconcile_lock: anyio.Lock = field(default_factory=anyio.Lock)
    cancelled: set[str] = field(default_factory=set)  # jobs whose cancel this engine has seen


class ShardRunner:
    """Moves one leased shard through its phases until it is ingested (or abandoned)."""

    def __init__(self, shared: EngineShared, provider: Provider, job: Job, lease: Lease) -> None:
        self.shared = shared
        self.store = shared.store
        self.config = shared.config
        self.provider = provider
        self.job = job
        self.lease = lease
        self.step = StepRetry(give_up_after=shared.give_up_after)
        self._reconcile = True  # a shard found in `creating` may have a batch already: look before creating
        self._lease_renewed = time.monotonic()

    async def drive(self) -> None:
        WAITING.set(self._waiting)  # this task's HTTP waits are noted on the shard, for status displays
        while True:
            shard = await self.store.get_shard(self.lease.shard_id)
            phase = shard.phase
            if not phase.is_live:
                return
            try:
                if phase is ShardPhase.PLANNED:
                    async with self.shared.upload_slots:
                        await self._upload(shard)
                elif phase in (ShardPhase.UPLOADED, ShardPhase.CREATING):
                    await self._create(shard)
                elif phase is ShardPhase.SUBMITTED:
                    await self._poll(shard)
                elif phase is ShardPhase.ENDED:
                    async with self.shared.ingest_slots:
                        await self._ingest(shard)
            except BadRequestError as exc:
                if phase not in (ShardPhase.PLANNED, ShardPhase.UPLOADED, ShardPhase.CREATING):
                    raise
                if await self._input_file_gone(shard, exc):
                    continue
                log.warning("shard %s rejected by the provider: %s", shard.id, exc)
                code = exc.code or ("too_large" if exc.status == 413 else "rejected")
                if code in self.shared.retry.too_large_batch_errors and shard.request_count == 1:
                    code = "request_too_large"  # one request alone is too large: splitting cannot help
                errors = [BatchError(code=code, message=str(exc))]
                await self.store.shard_abandoned(self.lease, errors, self.shared.retry.settle_rejected(errors))

    async def _renew(self) -> None:
        if time.monotonic() - self._lease_renewed > self.config.lease_seconds / 3:
            await self.store.renew_lease(self.lease, self.config.lease_seconds)
            self._lease_renewed = time.monotonic()

    async def _waiting(self, seconds: float, why: str) -> None:
        with contextlib.suppress(StoreError):
            await self.store.shard_note(self.lease, f"{why}: trying again in {seconds:.0f}s")

    async def _failed(self, exc: ProviderError) -> None:
        """A provider call failed even after the HTTP layer's retries: note it, wait, keep the lease."""
        log.warning("shard %s: %s; trying again", self.lease.shard_id, exc)
        with contextlib.suppress(StoreError):
            await self.store.shard_note(self.lease, str(exc)[:500])
        await self.step.wait(exc)
        await self._renew()

    def _info(self, shard: Shard, spool: Path) -> ShardInfo:
        return ShardInfo(
            id=shard.id, job_id=shard.job_id, token=shard.token, endpoint=shard.endpoint, model=shard.model,
            request_count=shard.request_count, bytes=shard.bytes, spool_path=str(spool),
            completion_window=self.job.completion_window, metadata=self.job.metadata,
            created_at=shard.creating_at or shard.created_at,
        )

    def _spool_path(self, shard: Shard) -> Path:
        """This runner's own file for the shard: a worker that took the shard over never writes the same file
        as one still busy with it (the lease token is in the name)."""
        return self.shared.spool_dir / shard.job_id / f"shard-{shard.id}-{self.lease.token}.jsonl"

    async def _spool(self, shard: Shard) -> Path:
        """The shard's input file, built from the store when this runner has none yet (it is deterministic),
        and checked against the shard: one line per member."""
        path = self._spool_path(shard)
        if path.exists():
            return path
        lines = 0
        try:
            async with SpoolWriter(path) as writer:
                async for rows in self.store.spool_rows(shard.id):
                    await writer.write([self.provider.encode_line(wire, url, body) for wire, url, body in rows])
                    lines += len(rows)
        except OSError as exc:  # a full disk or a read-only spool directory: local storage, like the store
            raise StoreError(f"cannot write the spool file {path}: {exc.strerror or exc}") from exc
        if lines != shard.request_count:
            path.unlink(missing_ok=True)
            raise StoreError(f"shard {shard.id}: the store holds {lines} members, the shard says {shard.request_count}")
        return path

    async def _upload(self, shard: Shard) -> None:
        spool = await self._spool(shard)
        while True:
            try:
                file_id = await self.provider.upload(self._info(shard, spool))
                failpoint("after_upload")
                break
            except BadRequestError:
                raise
            except ProviderError as exc:
                await self._failed(exc)
        self.step.reset()
        await self.store.shard_uploaded(self.lease, file_id)

    async def _input_file_gone(self, shard: Shard, exc: BadRequestError | NotFoundError) -> bool:
        """A create refused because its uploaded file is gone (deleted, expired): back to ``planned``, so the
        file is uploaded again from the store. True when that was the cause."""
        if shard.file_id is None or exc.status not in (400, 404):
            return False
        if await self.provider.file_exists(shard.file_id):
            return False
        log.warning("shard %s: input file %s is gone at the provider; uploading it again", shard.id, shard.file_id)
        await self.store.shard_reupload(self.lease, f"input file {shard.file_id} was gone before create")
        self._spool_path(shard).unlink(missing_ok=True)
        return True

    async def _create(self, shard: Shard) -> None:
        if shard.phase is ShardPhase.UPLOADED:
            await self.store.shard_creating(self.lease)
            shard = await self.store.get_shard(shard.id)
            self._reconcile = False  # we just entered `creating`: nothing can exist yet
        spool = await self._spool(shard)
        info = self._info(shard, spool)
        while True:
            try:
                if self._reconcile and await self._adopt(info, shard):
                    break
                if self.job.id in self.shared.cancelled or await self._cancel_requested():
                    await self.store.shard_abandoned(self.lease, [], self.shared.retry.settle_unreported(
                        RemoteBatch(id="", status=BatchStatus.CANCELLED, raw_status="cancelled"),
                        max_attempts=self.job.max_attempts, cancel_requested=True))
                    break
                failpoint("before_create")
                # The last moment to learn that the shard is no longer ours (this process was frozen for longer
                # than the lease, and another worker took the shard over): creating now would make a second
                # batch for it. LeaseLostError ends this runner.
                await self.store.renew_lease(self.lease, self.config.lease_seconds)
                remote = await self.provider.create(info, shard.file_id)
                failpoint("after_create")
                await self._submitted(shard, remote, adopted=False)
                break
            except NotFoundError as exc:
                if await self._input_file_gone(shard, exc):
                    return
                self._reconcile = True
                await self._failed(exc)
            except BadRequestError:
                raise
            except ProviderError as exc:
                # only a failure that may have reached the provider can have made a batch: a dropped connection,
                # a timeout, or a 5xx other than "overloaded"; an answered refusal made nothing
                self._reconcile = exc.status not in _NOTHING_CREATED
                await self._failed(exc)
            except BatchClaimedError as exc:  # another process adopted that batch first: look again
                log.info("%s", exc)
                self._reconcile = True
        self.step.reset()
        spool.unlink(missing_ok=True)

    async def _cancel_requested(self) -> bool:
        return (await self.store.get_job(self.job.id, with_counts=False)).cancel_requested

    async def _adopt(self, info: ShardInfo, shard: Shard) -> bool:
        """Look for a batch created for this shard before a crash; record it if found (invariant 3).

        Batches recorded for other shards are excluded (and a unique index stops two processes recording one
        batch twice). Only a match verified by the shard's token is adopted. A candidate the provider cannot
        verify yet (Anthropic: a running batch of the right size, created after this shard's create began, whose
        ids show only in its results) is neither adopted nor ignored: we wait until it ends and its ids tell whose
        it is, since guessing wrong either way pays for the same requests twice.
        """
        interval = self.config.poll_interval
        while True:
            async with self.shared.reconcile_lock:
                exclude = await self.store.recorded_batch_ids(since=info.created_at - RECONCILE_HORIZON)
                remote = await self.provider.find(info, exclude)
                if remote is None:
                    return False
                if remote.token == shard.token:
                    log.info("shard %s: adopted batch %s created before a crash", shard.id, remote.id)
                    await self._submitted(shard, remote, adopted=True)
                    return True
            log.info("shard %s: batch %s may be this shard's; waiting for it to end to check", shard.id, remote.id)
            await anyio.sleep(interval * (0.8 + 0.4 * random.random()))
            interval = min(interval * 1.5, self.config.max_poll_interval)
            await self._renew()

    async def _submitted(self, shard: Shard, remote: RemoteBatch, *, adopted: bool) -> None:
        await self.store.shard_submitted(self.lease, remote)
        self.shared.events.publish(BatchCreated(job_id=self.job.id, shard_id=shard.id, batch_id=remote.id,
                                                request_count=shard.request_count, attempt=shard.attempt,
                                                adopted=adopted))

    async def _poll(self, shard: Shard) -> None:
        """Follow the batch until it ends: its provider's poller looks at it (with all the others, see
        ``polling``) and wakes this runner when there is something new."""
        assert shard.batch_id is not None
        cancel_sent = False
        # a 404 this soon after the create means "not visible yet" (Anthropic's eventual consistency); later, the
        # provider has forgotten the batch (measured from the create, also when an earlier process made it)
        visible_by = (shard.creating_at or 0.0) + self.provider.visibility_grace
        last: tuple[str, dict[str, int]] | None = None
        poller = self.shared.polls.poller(self.provider)
        with poller.watch(shard.batch_id, self.job.id, shard.provider_created_at or 0.0) as watch:
            while True:
                try:
                    remote = await watch.next()
                    stoppable = remote.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
                    cancel = self.job.id in self.shared.cancelled
                    if cancel and not cancel_sent and stoppable and not remote.status.is_terminal:
                        remote = await self.provider.cancel(shard.batch_id)
                        cancel_sent = True
                except NotFoundError as exc:
                    if time.time() <= visible_by:
                        continue  # not visible yet: the poller looks again
                    await self._vanished(shard, exc)
                    return
                except ProviderError as exc:
                    await self._failed(exc)
                    continue
                self.step.reset()
                seen = (remote.status.value, remote.counts)
                if seen != last or remote.status.is_terminal:
                    await self.store.shard_polled(self.lease, remote)
                    failpoint("during_poll")
                    if seen != last:
                        self.shared.events.publish(BatchStatusChanged(
                            job_id=self.job.id, shard_id=shard.id, batch_id=remote.id, status=remote.status,
                            counts=remote.counts))
                    last = seen
                if remote.status.is_terminal:
                    return
                # no lease renewal here: the engine's lease keeper renews every lease in one UPDATE

    async def _vanished(self, shard: Shard, exc: NotFoundError) -> None:
        """The provider no longer knows a batch we recorded. Look for the shard's batch by token once more (a
        batch under another id is adopted); else settle its members by the recorded rule and end the shard,
        so that neither this job nor any other waits on it for ever."""
        assert shard.batch_id is not None
        info = self._info(shard, self._spool_path(shard))
        async with self.shared.reconcile_lock:
            exclude = await self.store.recorded_batch_ids(since=info.created_at - RECONCILE_HORIZON)
            remote = await self.provider.find(info, exclude | {shard.batch_id})
        if remote is not None and remote.token == shard.token:
            log.warning("shard %s: batch %s is gone, but %s carries its token: following that one",
                        shard.id, shard.batch_id, remote.id)
            await self.store.shard_rebind(self.lease, remote)
            return
        job = await self.store.get_job(self.job.id, with_counts=False)
        settle = self.shared.retry.settle_vanished(shard.batch_id, max_attempts=job.max_attempts,
                                                   cancel_requested=job.cancel_requested)
        log.warning("shard %s: %s; %s", shard.id, exc, settle.error_message)
        await self.store.shard_abandoned(self.lease, [BatchError(code=settle.error_code, message=settle.error_message)],
                                         settle)

    async def _ingest(self, shard: Shard) -> None:
        """Stream the results into the store in chunks; the shard is marked ingested with the last one."""
        assert shard.batch_id is not None and shard.batch_status is not None
        remote = RemoteBatch(
            id=shard.batch_id, status=shard.batch_status, raw_status=shard.batch_status.value,
            counts=shard.provider_counts, output_file_id=shard.output_file_id, error_file_id=shard.error_file_id,
            errors=msgspec.convert(shard.errors, list[BatchError]),
        )
        job = await self.store.get_job(self.job.id, with_counts=False)  # a cancel may have come meanwhile
        # a batch cancelled at the provider by someone else counts as a cancel of its requests (see RetryStrategy)
        cancelled = job.cancel_requested or remote.status is BatchStatus.CANCELLED
        workdir = self.shared.spool_dir / shard.job_id / "downloads"  # not made here: the built-in providers stream
        retry = self.shared.retry
        chunk = self.config.ingest_chunk
        gone = False  # the provider no longer has the results
        while True:
            seen: set[int] = set()  # rids that have a result line
            made_ok: list[int] = []  # rids the results made succeed: settled with the shard's last chunk
            rows: list[ResultRow] = []
            orphans: list[tuple[str, bytes]] = []
            lines: list[ResultLine] = []
            lookup = min(_LOOKUP_LINES, chunk)
            try:
                held = 0  # bytes of result bodies held (in lines and rows) since the last committed chunk
                # closed in this task when it is cancelled (a stopped run), not later by the garbage collector
                # in another one, where the provider's open response and HTTP slot cannot be given back
                async with contextlib.aclosing(self.provider.results(remote, workdir)) as stream:
                    async for line in stream:
                        lines.append(line)
                        held += len(line.body) if line.body is not None else 0
                        if len(lines) >= lookup or held >= INGEST_CHUNK_BYTES:
                            await self._add_rows(shard.id, job.max_attempts, cancelled, lines, seen, made_ok, rows,
                                                 orphans)
                            lines = []
                        if len(rows) >= chunk or held >= INGEST_CHUNK_BYTES:
                            await self.store.ingest(self.lease, rows, orphans)
                            failpoint("mid_ingest")
                            rows, orphans, held = [], [], 0
                            await self._renew()
                await self._add_rows(shard.id, job.max_attempts, cancelled, lines, seen, made_ok, rows, orphans)
                break
            except (NotFoundError, BadRequestError) as exc:  # 404, or Anthropic's 410 for archived results
                if exc.status not in (404, 410):
                    raise
                log.warning("shard %s: the results of batch %s are gone: %s", shard.id, remote.id, exc)
                gone = True
                break
            except ProviderError as exc:
                await self._failed(exc)
        self.step.reset()
        finish = retry.settle_unreported(remote, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested)
        if gone:
            finish = retry.settle_gone(remote)
        elif retry.over_capacity(remote) and shard.request_count > 1:
            finish = msgspec.structs.replace(finish, refund=True)  # nothing ran; a smaller batch may fit
        elif remote.status is BatchStatus.FAILED and retry.too_large(remote.errors) and shard.request_count > 1:
            finish = msgspec.structs.replace(finish, state=RequestState.PENDING, refund=True)
        failpoint("before_finish")
        await self.store.ingest(self.lease, rows, orphans, finish=finish, succeeded=made_ok)
        if orphans:
            log.warning("shard %s: %d result lines for unknown custom_ids kept aside", shard.id, len(orphans))
        succeeded, failed, again = await self.store.shard_tally(shard.id)
        self.shared.events.publish(ResultsIngested(job_id=self.job.id, shard_id=shard.id, batch_id=remote.id,
                                                   succeeded=succeeded, failed=failed, resubmitted=again))

    async def _add_rows(
        self, shard_id: int, max_attempts: int, cancelled: bool, lines: list[ResultLine], seen: set[int],
        succeeded: list[int], rows: list[ResultRow], orphans: list[tuple[str, bytes]],
    ) -> None:
        """Turn a few result lines into result rows (appended to ``rows``, and to ``succeeded`` the rids they
        make succeed), their members looked up in one query: memory holds the members of these lines, not
        of the whole shard. A line whose id the shard does not know, or knows already, goes to ``orphans``."""
        if not lines:
            return
        members = await self.store.member_requests(shard_id, [line.wire_id for line in lines])
        retry = self.shared.retry
        for line in lines:
            member = members.get(line.wire_id)
            if member is None or member[0] in seen:
                orphans.append((line.wire_id, msgspec.json.encode(line)))
                continue
            rid, request_attempt = member
            seen.add(rid)
            state = retry.state_after(retry.classify(line), attempt=request_attempt, max_attempts=max_attempts,
                                      cancel_requested=cancelled)
            rows.append(_result_row(rid, request_attempt, state, line))
            if state is RequestState.SUCCEEDED:
                succeeded.append(rid)


def _result_row(rid: int, attempt: int, state: RequestState, line: ResultLine) -> ResultRow:
    usage = line.usage
    return ResultRow(
        rid=rid, attempt=attempt, outcome=line.outcome, state=state, status_code=line.status_code,
        body=bytes(line.body) if line.body is not None else None, error_code=line.error_code,
        error_message=line.error_message,
        input_tokens=usage.input_tokens if usage else None, output_tokens=usage.output_tokens if usage else None,
        cached_tokens=usage.cached_input_tokens if usage else None, model=line.model, request_id=line.request_id,
        line_id=line.line_id,
    )
