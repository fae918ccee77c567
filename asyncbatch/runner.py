"""ShardRunner: one leased shard driven through its phases, each committed before the next network step.

planned -> uploaded -> creating -> submitted -> ended -> ingested (or abandoned). A process killed at any
instant leaves the shard in a phase from which another runner continues (design.md, invariants 2-8): the
input file is rebuilt from the store, a batch that may exist is looked for before creating one, and results
are upserted, so ingesting again is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec

from .errors import BadRequestError, NotFoundError, ProviderError, StoreError
from .events import BatchCreated, BatchStatusChanged, ResultsIngested
from .failpoints import failpoint
from .jsonl import SpoolWriter
from .model import BatchStatus, Job, RequestState, Shard, ShardInfo, ShardPhase
from .providers.base import BatchError, Provider, RemoteBatch, ResultLine
from .store import BatchClaimedError, ResultRow

if TYPE_CHECKING:
    from .manager import BatchManager

log = logging.getLogger("asyncbatch")

_TRANSIENT_BACKOFF_MAX = 60.0
_LOOKUP_LINES = 1000  # result lines whose members are looked up in one query while ingesting
# An ingest chunk also ends when its result bodies reach this size: 10,000 embeddings of 3,072 dimensions would
# be 600 MB, and memory must not depend on what the model answered.
INGEST_CHUNK_BYTES = 16 << 20
RECONCILE_HORIZON = 7 * 86400.0  # batch ids recorded this long before a shard's create are excluded from find()


class ShardRunner:
    """Moves one leased shard through its phases until it is ingested (or abandoned)."""

    def __init__(self, manager: BatchManager, job_id: str, shard_id: int) -> None:
        self.m = manager
        self.store = manager.store
        self.job_id = job_id
        self.shard_id = shard_id
        self.owner = manager.owner
        self._reconcile = True  # a shard found in `creating` may have a batch already: look before creating
        self._lease_renewed = time.monotonic()

    async def drive(self) -> None:
        job = await self.store.get_job(self.job_id, with_counts=False)
        provider = self.m.provider_for(job)
        while True:
            shard = await self.store.get_shard(self.shard_id)
            phase = shard.phase
            if not phase.is_live:
                return
            try:
                if phase is ShardPhase.PLANNED:
                    async with self.m._upload_slots:
                        await self._upload(job, provider, shard)
                elif phase in (ShardPhase.UPLOADED, ShardPhase.CREATING):
                    await self._create(job, provider, shard)
                elif phase is ShardPhase.SUBMITTED:
                    await self._poll(provider, shard)
                elif phase is ShardPhase.ENDED:
                    async with self.m._ingest_slots:
                        await self._ingest(provider, shard)
            except BadRequestError as exc:
                if phase not in (ShardPhase.PLANNED, ShardPhase.UPLOADED, ShardPhase.CREATING):
                    raise
                log.warning("shard %s rejected by the provider: %s", shard.id, exc)
                errors = [BatchError(code=exc.code or "rejected", message=str(exc))]
                await self.store.shard_abandoned(shard.id, errors, self.m.retry.settle_rejected(errors))

    async def _renew(self) -> None:
        if time.monotonic() - self._lease_renewed > self.m.lease_seconds / 3:
            await self.store.renew_lease(self.shard_id, self.owner, self.m.lease_seconds)
            self._lease_renewed = time.monotonic()

    async def _transient(self, exc: ProviderError, attempt: int) -> None:
        """A provider call failed even after the HTTP layer's retries: wait, keep the lease, try again."""
        if not exc.retryable:
            raise exc
        delay = min(2.0 ** attempt, _TRANSIENT_BACKOFF_MAX) * (0.75 + random.random() / 2)
        log.warning("shard %s: %s; trying again in %.1fs", self.shard_id, exc, delay)
        await anyio.sleep(delay)
        await self._renew()

    def _info(self, job: Job, shard: Shard, spool: Path) -> ShardInfo:
        return ShardInfo(
            id=shard.id, job_id=shard.job_id, token=shard.token, endpoint=shard.endpoint, model=shard.model,
            request_count=shard.request_count, bytes=shard.bytes, spool_path=str(spool),
            completion_window=job.completion_window, metadata=job.metadata,
            created_at=shard.creating_at or shard.created_at,
        )

    async def _spool(self, provider: Provider, shard: Shard) -> Path:
        """The shard's input file, rebuilt from the store when missing (it is deterministic)."""
        path = self.m.spool_path(shard)
        if path.exists():
            return path
        try:
            async with SpoolWriter(path) as writer:
                async for rows in self.store.spool_rows(shard.id):
                    await writer.write([provider.encode_line(wire, url, body) for wire, url, body in rows])
        except OSError as exc:  # a full disk or a read-only spool directory: local storage, like the store
            raise StoreError(f"cannot write the spool file {path}: {exc.strerror or exc}") from exc
        return path

    async def _upload(self, job: Job, provider: Provider, shard: Shard) -> None:
        spool = await self._spool(provider, shard)
        attempt = 0
        while True:
            try:
                file_id = await provider.upload(self._info(job, shard, spool))
                failpoint("after_upload")
                break
            except ProviderError as exc:
                await self._transient(exc, attempt)
                attempt += 1
        await self.store.shard_uploaded(shard.id, self.owner, file_id)

    async def _create(self, job: Job, provider: Provider, shard: Shard) -> None:
        if shard.phase is ShardPhase.UPLOADED:
            await self.store.shard_creating(shard.id, self.owner)
            shard = await self.store.get_shard(shard.id)
            self._reconcile = False  # we just entered `creating`: nothing can exist yet
        spool = await self._spool(provider, shard)
        info = self._info(job, shard, spool)
        attempt = 0
        while True:
            try:
                if self._reconcile and await self._adopt(provider, info, shard):
                    break
                if (await self.store.get_job(self.job_id, with_counts=False)).cancel_requested:
                    await self.store.shard_abandoned(shard.id, [], self.m.retry.settle_unreported(
                        RemoteBatch(id="", status=BatchStatus.CANCELLED, raw_status="cancelled"),
                        max_attempts=job.max_attempts, cancel_requested=True))
                    break
                failpoint("before_create")
                # The last moment to learn that the shard is no longer ours (this process was frozen for longer
                # than the lease, and another worker took the shard over): creating now would make a second
                # batch for it. LeaseLostError ends this runner.
                await self.store.renew_lease(shard.id, self.owner, self.m.lease_seconds)
                remote = await provider.create(info, shard.file_id)
                failpoint("after_create")
                await self._submitted(shard, remote, adopted=False)
                break
            except ProviderError as exc:
                self._reconcile = True  # an ambiguous failure may have created the batch
                await self._transient(exc, attempt)
                attempt += 1
            except BatchClaimedError as exc:  # another process adopted that batch first: look again
                log.info("%s", exc)
                self._reconcile = True
        spool.unlink(missing_ok=True)

    async def _adopt(self, provider: Provider, info: ShardInfo, shard: Shard) -> bool:
        """Look for a batch created for this shard before a crash; record it if found (invariant 3).

        Batches recorded for other shards are excluded (and a unique index stops two processes recording one
        batch twice). Only a match verified by the shard's token is adopted. A candidate the provider cannot
        verify yet (Anthropic: a running batch of the right size and age, whose ids show only in its
        results) is neither adopted nor ignored: we wait until it ends and its ids tell whose it is, since
        guessing wrong either way pays for the same requests twice.
        """
        interval = self.m.poll_interval
        while True:
            async with self.m.reconcile_lock:
                exclude = await self.store.recorded_batch_ids(since=info.created_at - RECONCILE_HORIZON)
                remote = await provider.find(info, exclude)
                if remote is None:
                    return False
                if remote.token == shard.token:
                    log.info("shard %s: adopted batch %s created before a crash", shard.id, remote.id)
                    await self._submitted(shard, remote, adopted=True)
                    return True
            log.info("shard %s: batch %s may be this shard's; waiting for it to end to check", shard.id, remote.id)
            await anyio.sleep(interval * (0.8 + 0.4 * random.random()))
            interval = min(interval * 1.5, self.m.max_poll_interval)
            await self._renew()

    async def _submitted(self, shard: Shard, remote: RemoteBatch, *, adopted: bool) -> None:
        await self.store.shard_submitted(shard.id, self.owner, remote)
        self.m.events.publish(BatchCreated(job_id=self.job_id, shard_id=shard.id, batch_id=remote.id,
                                           request_count=shard.request_count, attempt=shard.attempt,
                                           adopted=adopted))

    async def _poll(self, provider: Provider, shard: Shard) -> None:
        assert shard.batch_id is not None
        interval = self.m.poll_interval
        cancel_sent = False
        submitted_at = time.time()
        attempt = 0
        last: tuple[str, dict[str, int]] | None = None
        while True:
            try:
                remote = await provider.retrieve(shard.batch_id)
                stoppable = remote.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
                cancel = self.job_id in self.m._cancelled
                if cancel and not cancel_sent and stoppable and not remote.status.is_terminal:
                    remote = await provider.cancel(shard.batch_id)
                    cancel_sent = True
            except NotFoundError:
                if time.time() - submitted_at > provider.visibility_grace:
                    raise
                remote = None  # just created and not visible yet (Anthropic's eventual consistency)
            except ProviderError as exc:
                await self._transient(exc, attempt)
                attempt += 1
                continue
            attempt = 0
            if remote is not None:
                seen = (remote.status.value, remote.counts)
                if seen != last or remote.status.is_terminal:
                    await self.store.shard_polled(shard.id, self.owner, remote)
                    failpoint("during_poll")
                    if seen != last:
                        if last is None or seen[0] != last[0]:
                            # a new phase (validating -> in progress -> finalizing): look again soon. Counts
                            # that move do not reset the backoff: they move all along a batch that runs for
                            # hours, and polling each of 1,000 batches every few seconds helps nobody.
                            interval = self.m.poll_interval
                        self.m.events.publish(BatchStatusChanged(job_id=self.job_id, shard_id=shard.id,
                                                                 batch_id=remote.id, status=remote.status,
                                                                 counts=remote.counts))
                    last = seen
                if remote.status.is_terminal:
                    return
            # no lease renewal here: the run's lease keeper renews every lease in one UPDATE
            await anyio.sleep(interval * (0.8 + 0.4 * random.random()))
            interval = min(interval * 1.5, self.m.max_poll_interval)

    async def _ingest(self, provider: Provider, shard: Shard) -> None:
        """Stream the results into the store in chunks; the shard is marked ingested with the last one."""
        assert shard.batch_id is not None and shard.batch_status is not None
        remote = RemoteBatch(
            id=shard.batch_id, status=shard.batch_status, raw_status=shard.batch_status.value,
            counts=shard.provider_counts, output_file_id=shard.output_file_id, error_file_id=shard.error_file_id,
            errors=msgspec.convert(shard.errors, list[BatchError]),
        )
        job = await self.store.get_job(self.job_id, with_counts=False)  # a cancel may have come meanwhile
        workdir = self.m.spool_dir / shard.job_id / "downloads"  # not made here: the built-in providers stream
        retry = self.m.retry
        attempt = 0
        gone = False  # the provider no longer has the results
        while True:
            seen: set[int] = set()  # rids that have a result line
            made_ok: list[int] = []  # rids the results made succeed: settled with the shard's last chunk
            rows: list[ResultRow] = []
            orphans: list[tuple[str, bytes]] = []
            lines: list[ResultLine] = []
            lookup = min(_LOOKUP_LINES, self.m.ingest_chunk)
            try:
                held = 0  # bytes of result bodies held (in lines and rows) since the last committed chunk
                # closed in this task when it is cancelled (a stopped run), not later by the garbage collector
                # in another one, where the provider's open response and HTTP slot cannot be given back
                async with contextlib.aclosing(provider.results(remote, workdir)) as stream:
                    async for line in stream:
                        lines.append(line)
                        held += len(line.body) if line.body is not None else 0
                        if len(lines) >= lookup or held >= INGEST_CHUNK_BYTES:
                            await self._add_rows(shard.id, job, lines, seen, made_ok, rows, orphans)
                            lines = []
                        if len(rows) >= self.m.ingest_chunk or held >= INGEST_CHUNK_BYTES:
                            await self.store.ingest(shard.id, self.owner, rows, orphans)
                            failpoint("mid_ingest")
                            rows, orphans, held = [], [], 0
                            await self._renew()
                await self._add_rows(shard.id, job, lines, seen, made_ok, rows, orphans)
                break
            except (NotFoundError, BadRequestError) as exc:  # 404, or Anthropic's 410 for archived results
                if exc.status not in (404, 410):
                    raise
                log.warning("shard %s: the results of batch %s are gone: %s", shard.id, remote.id, exc)
                gone = True
                break
            except ProviderError as exc:
                await self._transient(exc, attempt)
                attempt += 1
        job = await self.store.get_job(self.job_id, with_counts=False)
        finish = retry.settle_unreported(remote, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested)
        if gone:
            finish = retry.settle_gone(remote)
        elif retry.over_capacity(remote) and shard.request_count > 1:
            finish = msgspec.structs.replace(finish, refund=True)  # nothing ran; a smaller batch may fit
        failpoint("before_finish")
        await self.store.ingest(shard.id, self.owner, rows, orphans, finish=finish, succeeded=made_ok)
        if orphans:
            log.warning("shard %s: %d result lines for unknown custom_ids kept aside", shard.id, len(orphans))
        succeeded, failed, again = await self.store.shard_tally(shard.id)
        self.m.events.publish(ResultsIngested(job_id=self.job_id, shard_id=shard.id, batch_id=remote.id,
                                              succeeded=succeeded, failed=failed, resubmitted=again))


    async def _add_rows(
        self, shard_id: int, job: Job, lines: list[ResultLine], seen: set[int], succeeded: list[int],
        rows: list[ResultRow], orphans: list[tuple[str, bytes]],
    ) -> None:
        """Turn a few result lines into result rows (appended to ``rows``, and to ``succeeded`` the rids they
        make succeed), their members looked up in one query: memory holds the members of these lines, not
        of the whole shard. A line whose id the shard does not know, or knows already, goes to ``orphans``."""
        if not lines:
            return
        members = await self.store.member_requests(shard_id, [line.wire_id for line in lines])
        retry = self.m.retry
        for line in lines:
            member = members.get(line.wire_id)
            if member is None or member[0] in seen:
                orphans.append((line.wire_id, msgspec.json.encode(line)))
                continue
            rid, request_attempt = member
            seen.add(rid)
            state = retry.state_after(retry.classify(line), attempt=request_attempt, max_attempts=job.max_attempts,
                                      cancel_requested=job.cancel_requested)
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
