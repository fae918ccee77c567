"""BatchManager: the caller's side of asyncbatch, over a durable store.

The manager validates and stores jobs, reads their status, results and events, acknowledges and cancels; it
never speaks HTTP and never writes SQL. Running the work is the engine's (``asyncbatch.engine``): ``run`` and
``wait`` hand jobs to it until they end, ``start`` lets it serve in the background of an async service, and an
``asyncbatch worker`` process can do the same for every manager that submits to the same store.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from .checks import check_url
from .cost import job_cost, unknown_models
from .engine import Engine, EngineConfig, ProviderPool, RetryStrategy, Router
from .engine.pool import KeyResolver, env_key, spec_of
from .errors import AsyncBatchError, JobConflictError, ProviderError, ValidationError
from .events import AnyEvent, EventBus, watch_job
from .model import Job, JobStatus, NewRequest, ProviderSpec, Result, Shard
from .providers import create_provider
from .providers.base import Provider, ShardLimits
from .results import read_results
from .store import Store, open_store
from .validation import ContentDigest, RequestSource, Validator, check_metadata, validated_chunks

if TYPE_CHECKING:
    from .cost import CostReport

log = logging.getLogger("asyncbatch")


class BatchManager:
    """Submit requests, have them run through provider batches, and read results back, durably.

    ``db`` names the job store: a SQLite file path (created when missing), ``sqlite:///path``,
    ``postgresql://...``, or a ``Store``. ``provider`` (an instance or a name such as ``"anthropic"``) is the
    default provider of new jobs; each request's model may route it elsewhere (``anthropic/claude-...``,
    ``claude-*``; or pass a ``router``). Jobs found in the store get their providers back from what they
    recorded, with keys from the environment (``keys`` resolves them otherwise).

    The other keyword arguments are the engine's (``EngineConfig``): how often to poll, how large a batch may
    be, how long a lease lasts...
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | Store,
        *,
        provider: Provider | str | None = None,
        router: Router | None = None,
        poll_interval: float = 5.0,
        max_poll_interval: float = 300.0,
        max_requests_per_batch: int | None = None,
        max_bytes_per_batch: int | None = None,
        lease_seconds: float = 60.0,
        spool_dir: str | os.PathLike[str] | None = None,
        retry: RetryStrategy | None = None,
        ingest_chunk: int = 10_000,
        capacity_hold: float = 60.0,
        give_up_after: float = 900.0,
        api_key_env: str | None = None,
        keys: KeyResolver = env_key,
        poll_rate: float = 10.0,
        retry_window: float = 30.0,
    ) -> None:
        self.store: Store = db if not isinstance(db, str | os.PathLike) else open_store(db)
        self.config = EngineConfig(
            poll_interval=poll_interval, max_poll_interval=max(max_poll_interval, poll_interval),
            max_requests_per_batch=max_requests_per_batch, max_bytes_per_batch=max_bytes_per_batch,
            lease_seconds=lease_seconds, spool_dir=os.fspath(spool_dir) if spool_dir is not None else None,
            ingest_chunk=ingest_chunk, capacity_hold=capacity_hold, give_up_after=give_up_after,
            poll_rate=poll_rate, retry_window=retry_window,
        )
        self.pool = ProviderPool(keys=keys)
        self.events = EventBus()
        self.engine = Engine(self.store, config=self.config, retry=retry, pool=self.pool, events=self.events)
        self._api_key_env = api_key_env
        self._default: ProviderSpec | None = self._spec(provider) if provider is not None else None
        self._router = router
        self._stack: AsyncExitStack | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._serving = False

    def __repr__(self) -> str:
        return f"BatchManager({self.store.url!r})"

    async def __aenter__(self) -> BatchManager:
        await self.open()
        stack = AsyncExitStack()
        self._background = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None and self._background is not None:
            self._background.cancel_scope.cancel()  # background work stops; the store stays consistent
            self._background = None
            await stack.aclose()
        await self.aclose()

    async def open(self) -> None:
        await self.store.open()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.pool.aclose()
            await self.store.close()

    # --- configuration kept readable for callers ---------------------------------------------------------------

    @property
    def owner(self) -> str:
        return self.engine.owner

    @property
    def retry(self) -> RetryStrategy:
        return self.engine.retry

    @property
    def poll_interval(self) -> float:
        return self.config.poll_interval

    @property
    def lease_seconds(self) -> float:
        return self.config.lease_seconds

    @property
    def spool_dir(self) -> os.PathLike[str]:
        return self.engine.spool_dir

    @property
    def provider(self) -> Provider:
        """The default provider of new jobs (OpenAI from the environment unless one was given)."""
        return self.pool.get(self._default_spec())

    def _default_spec(self) -> ProviderSpec:
        if self._default is None:
            self._default = self._spec("openai")
        return self._default

    def provider_for(self, job: Job, route: str | None = None) -> Provider:
        """The provider that runs ``route`` of a stored job (default: its default provider)."""
        return self.engine.provider(job, route if route is not None else job.provider)

    def limits_for(self, provider: Provider) -> ShardLimits:
        return self.config.limits(provider.limits)

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
        idempotency_key: str | None = None,
        owner: str | None = None,
        check_keys: bool = True,
        provider: Provider | str | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> Job:
        """Validate and store a job; returns once every request is committed. Nothing is sent yet.

        ``requests`` is a JSONL path, or an iterable / async iterable of OpenAI batch lines (dicts or
        ``Request``s). With ``endpoint``, every line must be for it; without, a job may mix endpoints. Each
        request's model picks its provider (see ``BatchManager``). Any invalid request raises ``ValidationError``
        naming its line and custom_id, and nothing is stored; so does a provider without a key (``check_keys``).

        ``idempotency_key`` (or ``job_id``) makes the submit safe to retry: a retry with the same requests
        returns the job already stored, one with other requests raises ``JobConflictError``. ``provider`` is this
        job's default provider, instead of the manager's.

        What is worth a second look but not a refusal (a model the price data does not know, such as a
        misspelled ``gpt-4o-minni``; the same requests as an earlier job) goes to ``warn`` (default: the log).
        """
        warn = warn or log.warning
        if not 1 <= max_attempts <= 50:
            raise ValidationError("max_attempts must be between 1 and 50", field="max_attempts")
        default = self._spec(provider) if provider is not None else self._default_spec()
        clean_metadata = check_metadata(metadata or {})
        now = time.time()
        job = Job(
            id=job_id or f"job_{uuid.uuid4().hex[:24]}", provider=default.name, base_url=default.base_url,
            provider_options=default.options, routes={}, endpoint=endpoint or "*",
            completion_window=completion_window, max_attempts=max_attempts, metadata=clean_metadata,
            status=JobStatus.OPEN, created_at=now, updated_at=now, owner=owner, idempotency_key=idempotency_key,
        )
        validator = self._validator(endpoint, default)
        if check_keys:
            self.pool.get(default).check_key()
        try:
            count = await self.store.create_job(job, self._checked(job, requests, validator, check_keys=check_keys))
        except JobConflictError:
            return await self._resubmitted(job, requests, self._validator(endpoint, default))
        log.info("job %s stored with %d requests", job.id, count)
        for provider_name, model in unknown_models(validator.models):
            warn(f"model {model!r} ({provider_name}) is unknown to the price data: check its spelling (the provider "
                 "may accept it only to fail every request); its cost will show as unpriced")
        first = await self.store.find_job(content_hash=job.content_hash, owner=owner)
        if first is not None and first.id != job.id:
            warn(f"job {job.id} holds the same requests as job {first.id}, submitted earlier: running both pays "
                 "twice (pass an idempotency key to make a retried submit return the first)")
        self.engine.notify()
        return await self._job(job.id)

    def _spec(self, provider: Provider | str) -> ProviderSpec:
        if isinstance(provider, str):
            provider = create_provider(provider, key_env=self._api_key_env)
        return self.pool.add(provider, spec_of(provider, self._api_key_env))

    def _validator(self, endpoint: str | None, default: ProviderSpec) -> Validator:
        router = self._router or Router(default)
        return Validator(self.pool.get(default), endpoint, router=router, pool=self.pool)

    async def _checked(
        self, job: Job, requests: RequestSource, validator: Validator, *, check_keys: bool
    ) -> AsyncIterator[list[NewRequest]]:
        """The validated chunks, with the job's routes and digest filled in as they pass; once the last has
        passed, every route's provider is asked whether it accepts the job's options and has a key, so that a
        job that cannot run is refused before it is committed."""
        digest = ContentDigest()
        empty = True
        async for chunk in validated_chunks(requests, validator):
            empty = empty and not chunk
            digest.add(chunk)
            yield chunk
        if empty:
            raise ValidationError("the input holds no requests")
        job.routes.update(validator.routes)
        job.content_hash = digest.hexdigest()
        for spec in job.routes.values():
            provider = self.pool.get(spec)
            checker = getattr(provider, "check_job_options", None)
            if checker is not None:
                checker(job.completion_window, job.metadata)
            if check_keys:
                provider.check_key()

    async def _resubmitted(self, job: Job, requests: RequestSource, validator: Validator) -> Job:
        """A submit whose job id or idempotency key is taken: the stored job if it holds these requests."""
        existing = None
        if job.idempotency_key is not None:
            existing = await self.store.find_job(idempotency_key=job.idempotency_key, owner=job.owner)
        if existing is None:
            existing = await self.store.get_job(job.id)
        digest = ContentDigest()
        async for chunk in validated_chunks(requests, validator):
            digest.add(chunk)
        if digest.hexdigest() != existing.content_hash:
            key = f"idempotency key {job.idempotency_key!r}" if job.idempotency_key else f"job id {job.id!r}"
            raise JobConflictError(f"{key} names job {existing.id}, which holds other requests; "
                                   "use a new key (or job id) to submit these")
        log.info("job %s was submitted before with the same requests: returning it", existing.id)
        return self._attach(existing)

    # --- reading -------------------------------------------------------------------------------------------

    async def status(self, job_id: str) -> Job:
        return await self._job(job_id)

    async def list_jobs(self, *, owner: str | None = None) -> list[Job]:
        return [self._attach(job) for job in await self.store.list_jobs(owner=owner)]

    async def cost(self, job_id: str) -> CostReport:
        """What the job's results cost at batch prices, and what the same requests would have cost live."""
        return await job_cost(self.store, job_id)

    async def _job(self, job_id: str) -> Job:
        return self._attach(await self.store.get_job(job_id))

    def _attach(self, job: Job) -> Job:
        job.__dict__["_cost"] = functools.partial(self.cost, job.id)  # ``await job.cost()``; never serialised
        return job

    async def shards(self, job_id: str) -> list[Shard]:
        await self.store.get_job(job_id, with_counts=False)
        return await self.store.job_shards(job_id)

    async def results(
        self, job_id: str, *, all_attempts: bool = False, unconsumed: bool = False, raw_bodies: bool = False
    ) -> AsyncIterator[Result]:
        """Final result of every finished custom_id (or, with ``all_attempts``, every attempt), streamed.

        With ``unconsumed=True`` only results not yet acknowledged with ``acknowledge`` are yielded: a worker
        that is killed and restarted processes each result once. With ``raw_bodies=True`` each ``body`` is
        the stored JSON as ``msgspec.Raw``, not decoded: for writing it out again without a decode/encode.
        """
        async for result in read_results(self.store, job_id, all_attempts=all_attempts, unconsumed=unconsumed,
                                         raw_bodies=raw_bodies):
            yield result

    async def acknowledge(self, job_id: str, custom_ids: Iterable[str]) -> None:
        """Mark results consumed (durably); ``results(unconsumed=True)`` will not yield them again."""
        await self.store.acknowledge(job_id, custom_ids)

    async def orphans(self, job_id: str) -> list[tuple[int, str, bytes]]:
        """Result lines the provider returned for custom_ids the job does not know: (shard, id, line)."""
        return await self.store.orphans(job_id)

    async def watch(self, job_id: str, *, poll_interval: float = 1.0) -> AsyncIterator[AnyEvent]:
        """Events of a job, ending with ``JobFinished``: at once when this manager runs it, and synthesised
        from the store every ``poll_interval`` seconds when another process does (see ``events.watch_job``)."""
        async for event in watch_job(self.store, self.events, job_id, poll_interval=poll_interval):
            yield event

    async def repoint(
        self, job_id: str, *, base_url: str | None = None, api_key_env: str | None = None, route: str | None = None
    ) -> Job:
        """Send a stored job's batches not created yet to another base URL, or read its key from another
        variable, from now on: after a wrong base URL at submit (the job keeps what it recorded until told).
        ``route`` is one of the job's providers (default: its default one)."""
        if base_url is not None:
            check_url(base_url, field="base_url")  # a key in the URL would be stored: refused
        job = await self.store.get_job(job_id, with_counts=False)
        name = route if route is not None else job.provider
        spec = job.spec(name)
        changes = {k: v for k, v in (("base_url", base_url), ("key_env", api_key_env)) if v is not None}
        await self.store.set_route(job_id, name, msgspec.structs.replace(spec, **changes))
        log.info("job %s: route %s now %s", job_id, name, changes)
        return await self._job(job_id)

    # --- cancelling ----------------------------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: pending requests end ``cancelled``, live provider batches are asked to cancel.

        Results of requests that already ran are kept; the engine collects them and ends the job.
        """
        job = await self.store.get_job(job_id)
        if job.status.is_terminal:
            return self._attach(job)
        remote = await self.store.request_cancel(job_id)
        self.engine.cancel_seen(job_id)
        for shard in remote:
            if shard.batch_id is not None and not (shard.batch_status and shard.batch_status.is_terminal):
                try:
                    await self.engine.provider(job, shard.route or job.provider).cancel(shard.batch_id)
                except ProviderError as exc:  # the runner asks again when it polls
                    log.warning("cancel of batch %s failed: %s", shard.batch_id, exc)
        if not await self.store.job_has_live_work(job_id):
            await self.store.set_job_status(job_id, JobStatus.CANCELLED)
        return await self._job(job_id)

    # --- running -------------------------------------------------------------------------------------------

    async def wait(self, job_id: str) -> Job:
        """The job once it has ended: driven here until then, or, while ``start`` serves in the background,
        waited for."""
        if self._serving:
            async for _event in self.watch(job_id, poll_interval=min(1.0, self.config.poll_interval)):
                pass
        else:
            await self.engine.run([job_id])
        return await self._job(job_id)

    async def resume(self) -> list[Job]:
        """Continue every unfinished job in the store (whatever an earlier process left) to its end."""
        return await self.run()

    async def run(self, job_ids: Sequence[str] | None = None) -> list[Job]:
        """Drive the named jobs (default: every unfinished one) to their end; returns them."""
        if job_ids is None:
            job_ids = await self.store.unfinished_job_ids()
        await self.engine.run(job_ids)
        return [await self._job(job_id) for job_id in job_ids]

    def start(self, job_ids: Sequence[str] | None = None, *, max_jobs: int | None = None) -> None:
        """Run jobs in the background of an async service and return at once: the named ones until they end, or
        (by default) every unfinished job and every job submitted later, as ``asyncbatch worker`` does, until the
        manager is closed. Needs ``async with BatchManager(...)``, whose task group holds the work; ``wait``
        then waits for a job instead of running it."""
        if self._background is None:
            raise AsyncBatchError("start() needs the manager as a context manager: `async with BatchManager(...)`")
        if job_ids is None:
            self._serving = True
            self._background.start_soon(functools.partial(self.engine.serve, max_jobs=max_jobs))
        else:
            self._background.start_soon(self.engine.run, list(job_ids))
