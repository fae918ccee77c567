"""BatchManager: orchestration of jobs over a durable store and a provider.

The manager never speaks HTTP and never writes SQL. It validates and stores jobs, plans pending requests
into shards, leases them and hands each to a ``ShardRunner`` (runner.py), which moves it through its
phases; it reads results and events back. One anyio task group per run, one task per live shard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .errors import AsyncBatchError, ProviderError, ValidationError
from .events import (
    AnyEvent,
    EventBus,
    JobFinished,
    RequestsResubmitted,
    watch_job,
)
from .failpoints import failpoint
from .model import (
    ErrorInfo,
    Job,
    JobStatus,
    Outcome,
    RequestState,
    Result,
    Shard,
    Usage,
)
from .planner import RequestSource, Validator, check_metadata, validated_chunks
from .providers import create_provider
from .providers.base import Provider, ShardLimits
from .retry import RetryStrategy
from .runner import ShardRunner
from .store import LeaseLostError, NewRequest, SQLiteStore, Store, StoredResult, new_owner

if TYPE_CHECKING:
    from .cost import CostReport

log = logging.getLogger("asyncbatch")

UPLOADS_AT_ONCE = 4  # shards of one manager that build and upload their input files at the same time


class BatchManager:
    """Submit requests, drive them through provider batches, and read results back, durably.

    ``db`` is the SQLite file of the job store (created when missing). ``provider`` serves new jobs and
    the jobs in the store that were made with the same provider and base URL; other jobs in the store get
    their provider back by name (``create_provider``) with keys from the environment.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | Store,
        *,
        provider: Provider | None = None,
        poll_interval: float = 5.0,
        max_poll_interval: float = 300.0,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        lease_seconds: float = 60.0,
        spool_dir: str | os.PathLike[str] | None = None,
        retry: RetryStrategy | None = None,
        ingest_chunk: int = 10_000,
        capacity_hold: float = 60.0,
    ) -> None:
        self.store: Store = db if not isinstance(db, str | os.PathLike) else SQLiteStore(db)
        self._provider = provider
        self._providers: dict[bytes, Provider] = {}
        if provider is not None:
            self._providers[_provider_key(provider.name, provider.base_url, provider.options())] = provider
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.max_requests_per_batch = max_requests_per_batch
        self.max_bytes_per_batch = max_bytes_per_batch
        self.lease_seconds = lease_seconds
        self.retry = retry or RetryStrategy()
        self.ingest_chunk = ingest_chunk
        self.capacity_hold = capacity_hold
        store_path = self.store.path
        default_spool = Path(store_path + ".spool") if store_path != ":memory:" else Path(".asyncbatch-spool")
        self.spool_dir = Path(spool_dir) if spool_dir is not None else default_spool
        self.owner = new_owner()
        self.events = EventBus()
        self.reconcile_lock = anyio.Lock()
        self._wake = anyio.Event()
        # Jobs whose cancel this manager has seen (its own cancel(), or the store at each run loop step), so
        # that pollers need not read the job from the store on every poll.
        self._cancelled: set[str] = set()
        # Work that holds data in memory is bounded per manager, not per shard, so memory stays flat however
        # many shards a job has (the run's lease keeper keeps the leases of shards that wait): one shard
        # ingests at a time (all share one SQLite connection, so more at once gain nothing), and a few build
        # and upload their files at a time.
        self._ingest_slots = anyio.CapacityLimiter(1)
        self._upload_slots = anyio.CapacityLimiter(UPLOADS_AT_ONCE)

    def __repr__(self) -> str:
        return f"BatchManager({self.store.path!r})"

    async def __aenter__(self) -> BatchManager:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        await self.store.open()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for provider in self._providers.values():
                await provider.aclose()
            await self.store.close()

    # --- providers -----------------------------------------------------------------------------------------

    @property
    def provider(self) -> Provider:
        """The provider new jobs go to (OpenAI from the environment unless one was given)."""
        if self._provider is None:
            self._provider = create_provider("openai")
            key = _provider_key(self._provider.name, self._provider.base_url, self._provider.options())
            self._providers.setdefault(key, self._provider)
        return self._provider

    def provider_for(self, job: Job) -> Provider:
        """The provider a stored job was made for: the manager's own when it matches (name, base URL and
        options), else rebuilt by name with the recorded options and a key from the environment."""
        key = _provider_key(job.provider, job.base_url, job.provider_options)
        if key not in self._providers:
            self._providers[key] = create_provider(job.provider, base_url=job.base_url, **job.provider_options)
        return self._providers[key]

    def limits_for(self, provider: Provider) -> ShardLimits:
        return ShardLimits(
            max_requests=min(provider.limits.max_requests, self.max_requests_per_batch or provider.limits.max_requests),
            max_bytes=min(provider.limits.max_bytes, self.max_bytes_per_batch or provider.limits.max_bytes),
        )

    # --- submitting ----------------------------------------------------------------------------------------

    async def submit(
        self,
        requests: RequestSource,
        *,
        endpoint: str | None = None,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        max_attempts: int = 3,
        job_id: str | None = None,
    ) -> Job:
        """Validate and store a job; returns once every request is committed. Nothing is sent yet.

        ``requests`` is a JSONL path, or an iterable / async iterable of OpenAI batch lines (dicts or
        ``Request``s). With ``endpoint``, every line must be for it; without, a job may mix endpoints. Any
        invalid request raises ``ValidationError`` naming its line and custom_id, and nothing is stored.
        """
        if not 1 <= max_attempts <= 50:
            raise ValidationError("max_attempts must be between 1 and 50", field="max_attempts")
        provider = self.provider
        checker = getattr(provider, "check_job_options", None)
        clean_metadata = check_metadata(metadata or {})
        if checker is not None:
            checker(completion_window, clean_metadata)
        now = time.time()
        job = Job(
            id=job_id or f"job_{uuid.uuid4().hex[:24]}", provider=provider.name, base_url=provider.base_url,
            provider_options=provider.options(),
            endpoint=endpoint or "*", completion_window=completion_window, max_attempts=max_attempts,
            metadata=clean_metadata, status=JobStatus.OPEN, created_at=now, updated_at=now,
        )
        validator = Validator(provider, endpoint)
        count = await self.store.create_job(job, _non_empty(validated_chunks(requests, validator)))
        log.info("job %s stored with %d requests", job.id, count)
        return await self._job(job.id)

    # --- reading -------------------------------------------------------------------------------------------

    async def status(self, job_id: str) -> Job:
        return await self._job(job_id)

    async def list_jobs(self) -> list[Job]:
        return [self._attach(job) for job in await self.store.list_jobs()]

    async def cost(self, job_id: str) -> CostReport:
        """What the job's results cost at batch prices, and what the same requests would have cost live."""
        from .cost import job_cost

        return await job_cost(self, job_id)

    async def _job(self, job_id: str) -> Job:
        return self._attach(await self.store.get_job(job_id))

    def _attach(self, job: Job) -> Job:
        job.__dict__["_manager"] = self  # lets ``await job.cost()`` reach the store; never serialised
        return job

    async def shards(self, job_id: str) -> list[Shard]:
        await self.store.get_job(job_id)
        return await self.store.job_shards(job_id)

    async def results(
        self, job_id: str, *, all_attempts: bool = False, unconsumed: bool = False, raw_bodies: bool = False
    ) -> AsyncIterator[Result]:
        """Final result of every finished custom_id (or, with ``all_attempts``, every attempt), streamed.

        With ``unconsumed=True`` only results not yet acknowledged with ``acknowledge`` are yielded: a worker
        that is killed and restarted processes each result once. With ``raw_bodies=True`` each ``body`` is
        the stored JSON as ``msgspec.Raw``, not decoded: for writing it out again without a decode/encode.
        """
        job = await self.store.get_job(job_id)
        if all_attempts:
            after = (0, 0)
            while rows := await self.store.attempt_results(job_id, after=after):
                for row in rows:
                    yield _to_result(row, job.provider, raw_body=raw_bodies)
                after = (rows[-1].rid, rows[-1].attempt)
            return
        after_rid = 0
        while rows := await self.store.final_results(job_id, after_rid=after_rid, unconsumed=unconsumed):
            for row in rows:
                yield _to_result(row, job.provider, raw_body=raw_bodies)
            after_rid = rows[-1].rid

    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None:
        """Mark results consumed (durably); ``results(unconsumed=True)`` will not yield them again."""
        await self.store.acknowledge(job_id, custom_ids)

    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]:
        """Result lines the provider returned for custom_ids the job does not know: (shard, id, line)."""
        return await self.store.orphans(job_id)

    async def watch(self, job_id: str, *, poll_interval: float = 1.0) -> AsyncIterator[AnyEvent]:
        """Events of a job, ending with ``JobFinished``: at once when this manager drives it, and synthesised
        from the store every ``poll_interval`` seconds when another process does (see ``events.watch_job``)."""
        async for event in watch_job(self.store, self.events, job_id, poll_interval=poll_interval):
            yield event

    # --- cancelling ----------------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: pending requests end ``cancelled``, live provider batches are asked to cancel.

        Results of requests that already ran are kept; ``run()`` collects them and ends the job.
        """
        job = await self.store.get_job(job_id)
        if job.status.is_terminal:
            return job
        remote = await self.store.request_cancel(job_id)
        self._cancelled.add(job_id)
        provider = self.provider_for(job)
        for shard in remote:
            if shard.batch_id is not None and not (shard.batch_status and shard.batch_status.is_terminal):
                try:
                    await provider.cancel(shard.batch_id)
                except ProviderError as exc:  # the runner asks again when it polls
                    log.warning("cancel of batch %s failed: %s", shard.batch_id, exc)
        if not await self.store.job_has_live_work(job_id):
            await self.store.set_job_status(job_id, JobStatus.CANCELLED)
        return await self._job(job_id)

    # --- running -------------------------------------------------------------------------------------------

    async def wait(self, job_id: str) -> Job:
        """Drive one job to its end and return it."""
        await self.run([job_id])
        return await self._job(job_id)

    async def resume(self) -> list[Job]:
        """Continue every unfinished job in the store (whatever an earlier process left) to its end."""
        return await self.run()

    async def run(self, job_ids: Sequence[str] | None = None) -> list[Job]:
        """Drive the named jobs (default: every unfinished one) to their end; returns them."""
        if job_ids is None:
            job_ids = [job.id for job in await self.store.list_jobs() if not job.status.is_terminal]
        else:
            for job_id in job_ids:
                await self.store.get_job(job_id)  # unknown ids fail now, not halfway
        remaining = set(job_ids)
        active: dict[int, str] = {}  # shard id -> job id, for the shard tasks of this run
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_leases)
                while remaining:
                    for job_id in sorted(remaining):
                        if await self._step(job_id, tg, active):
                            remaining.discard(job_id)
                    if not remaining:
                        break
                    with anyio.move_on_after(min(self.lease_seconds / 3, 5.0)):
                        await self._wake.wait()
                    self._wake = anyio.Event()
                tg.cancel_scope.cancel()  # every job has ended: only the lease keeper is left
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return [await self._job(job_id) for job_id in job_ids]

    async def _keep_leases(self) -> None:
        """Renew every lease this manager holds, a third of a lease apart.

        A shard stays ours for as long as we live, also through a wait the runner cannot interrupt (a long
        Retry-After inside the HTTP layer, a slow upload): were the lease to lapse there, another worker
        would take the shard over, find no batch yet, create one, and our retry would create a second.
        """
        while True:
            await anyio.sleep(self.lease_seconds / 3)
            await self.store.renew_leases(self.owner, self.lease_seconds)

    async def _step(self, job_id: str, tg: anyio.abc.TaskGroup, active: dict[int, str]) -> bool:
        """Plan, claim and finish what can be for one job; True once the job has ended."""
        job = await self.store.get_job(job_id, with_counts=False)
        if job.status.is_terminal:
            return True
        if job.status is JobStatus.OPEN:
            await self.store.set_job_status(job_id, JobStatus.RUNNING)
        provider = self.provider_for(job)
        if job.cancel_requested:
            self._cancelled.add(job_id)
            await self.store.cancel_pending(job_id)  # retryable failures that came back after the cancel
        elif (limits := await self._plan_limits(job_id, provider)) is not None:
            # Each shard is started as soon as it is planned: its upload and batch overlap the planning of
            # the next, and its results can be ingested while the provider still runs later shards.
            while planned := await self.store.plan_shard(job, limits, provider.wire_id):
                if planned.attempt > 1:
                    self.events.publish(RequestsResubmitted(job_id=job_id, shard_id=planned.id,
                                                            count=planned.request_count, attempt=planned.attempt))
                    failpoint("after_resubmit_plan")
                await self._start_shards(job_id, tg, active)
        await self._start_shards(job_id, tg, active)
        if job_id in active.values() or await self.store.job_has_live_work(job_id):
            return False
        final = JobStatus.CANCELLED if job.cancel_requested else JobStatus.DONE
        await self.store.set_job_status(job_id, final)
        log.info("job %s %s", job_id, final.value)
        self.events.publish(JobFinished(job_id=job_id, status=final, counts=await self.store.counts(job_id)))
        return True

    async def _start_shards(self, job_id: str, tg: anyio.abc.TaskGroup, active: dict[int, str]) -> None:
        """Lease the job's live shards that nobody holds and start a task for each."""
        for shard_id in await self.store.claim_shards(job_id, self.owner, self.lease_seconds):
            if shard_id not in active:
                active[shard_id] = job_id
                tg.start_soon(self._shard_task, job_id, shard_id, active)

    async def _plan_limits(self, job_id: str, provider: Provider) -> ShardLimits | None:
        """The limits for planning the job's pending requests now, or None while the job is held.

        After a batch failed because the provider's queue for the account was full (OpenAI's enqueued-token
        limit, ``RetryStrategy.over_capacity``), the job waits ``capacity_hold`` seconds, then sends its
        requests in batches half that size, and half again after each further such failure. Read from the
        store, so a restarted process (or another worker) holds and halves the same way.
        """
        limits = self.limits_for(provider)
        last = await self.store.last_failed_with(job_id, self.retry.capacity_batch_errors)
        if last is None:
            return limits
        if time.time() < (last.ended_at or 0.0) + self.capacity_hold:
            return None
        return ShardLimits(max_requests=max(1, min(limits.max_requests, last.request_count // 2)),
                           max_bytes=max(1, min(limits.max_bytes, last.bytes // 2)))

    async def _shard_task(self, job_id: str, shard_id: int, active: dict[int, str]) -> None:
        try:
            await ShardRunner(self, job_id, shard_id).drive()
        except LeaseLostError as exc:
            log.info("%s", exc)
        finally:
            active.pop(shard_id, None)
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(AsyncBatchError):
                    await self.store.release(shard_id, self.owner)
            self._wake.set()

    def spool_path(self, shard: Shard) -> Path:
        return self.spool_dir / shard.job_id / f"shard-{shard.id}.jsonl"


def _provider_key(name: str, base_url: str | None, options: Mapping[str, Any]) -> bytes:
    return msgspec.json.encode([name, base_url, options], order="sorted")


async def _non_empty(chunks: AsyncIterator[list[NewRequest]]) -> AsyncIterator[list[NewRequest]]:
    """Pass chunks through; a job without a single request is an input error, not an empty job."""
    empty = True
    async for chunk in chunks:
        empty = empty and not chunk
        yield chunk
    if empty:
        raise ValidationError("the input holds no requests")


_OUTCOMES = {outcome.value: outcome for outcome in Outcome}  # a dict lookup is 10x cheaper than Outcome(x)


def _to_result(row: StoredResult, provider: str, *, raw_body: bool = False) -> Result:
    body: Any = None
    if row.body is not None:
        body = msgspec.Raw(row.body) if raw_body else msgspec.json.decode(row.body)
    error: ErrorInfo | None = None
    if row.state is not RequestState.SUCCEEDED:
        code = row.request_error_code or row.error_code or (f"http_{row.status_code}" if row.status_code else None)
        message = row.request_error_message or row.error_message or ""
        if not message and row.body is not None:
            decoded = msgspec.json.decode(row.body)
            if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
                message = str(decoded["error"].get("message", ""))
        error = ErrorInfo(code=code or "failed", message=message)
    usage = None
    if row.input_tokens is not None or row.output_tokens is not None:
        usage = Usage(input_tokens=row.input_tokens or 0, output_tokens=row.output_tokens or 0,
                      cached_input_tokens=row.cached_tokens or 0)
    return Result(
        custom_id=row.custom_id, status=row.state, attempt=row.attempt,
        outcome=_OUTCOMES[row.outcome] if row.outcome else None, status_code=row.status_code, body=body, error=error,
        usage=usage, model=row.model, batch_id=row.batch_id, request_id=row.request_id, provider=provider,
    )


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a caller should see from a failed run: ours first, then anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, AsyncBatchError):
            return leaf
    return leaves[0]
