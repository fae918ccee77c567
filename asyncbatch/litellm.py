"""The batch workflow users know from LiteLLM, on top of the durable engine.

Two families of names, each with an ``a``-prefixed async form and a blocking form for scripts and notebooks:

* the issue's helpers: ``batch_completion(model=..., messages=[[...], ...])``, ``batch_completion_create``,
  ``batch_completion_retrieve``, ``batch_completion_list``, ``batch_completion_cancel``, plus
  ``batch_completion_results`` (the results as a local OpenAI-format ``results.jsonl``) and
  ``batch_completion_cost``;
* LiteLLM's own Files + Batches names with its signatures: ``create_file``, ``create_batch``,
  ``retrieve_batch``, ``list_batches``, ``cancel_batch``, ``file_content``, so that code written for LiteLLM
  runs with only the import changed. (LiteLLM's ``batch_completion`` sends live requests and returns
  responses; ours submits a batch job at the batch price and returns the batch, as the issue asks.)

A batch here is an asyncbatch job: its ``id`` is the job id, its ``status`` is in OpenAI's words, and its
output and error "files" are the job's results, served from the store in OpenAI's output format.

Why a private event loop: the helpers are plain functions with no context manager to own a connection or
a running job, and the blocking forms must work inside Jupyter, where the kernel's loop is already running.
So every helper runs on one event loop in a daemon thread (an anyio blocking portal), which keeps one
``BatchManager`` per store and provider and drives the jobs it creates or reads in the background (set
``settings.drive = False`` to leave that to an ``asyncbatch run`` worker). The job itself lives in the
store: a process that dies loses nothing, and the next helper call about the job resumes it.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn, ParamSpec, TypeVar

import anyio
import msgspec
from anyio.from_thread import BlockingPortal

from .cost import CostReport, job_cost
from .engine.pool import spec_of
from .errors import (
    ConnectionFailedError,
    JobNotFoundError,
    NotFoundError,
    UnsupportedFeatureError,
    ValidationError,
)
from .export import output_line, write_results
from .manager import BatchManager
from .model import BatchStatus, Job, JobStatus, RequestCounts, RequestState, Shard, ShardPhase
from .progress import NotebookDisplay, follow, in_notebook
from .providers import PROVIDER_NAMES, create_provider
from .providers.base import BatchError, Provider
from .results import read_results

log = logging.getLogger("asyncbatch")

P = ParamSpec("P")
T = TypeVar("T")

CHAT_COMPLETIONS = "/v1/chat/completions"
TERMINAL_STATUSES = frozenset(s.value for s in BatchStatus if s.is_terminal)
_FAILURE_SETTLES = 1.0  # seconds a drive is given to end with an error its shard already noted
_UNSENT = frozenset({ShardPhase.PLANNED, ShardPhase.UPLOADED, ShardPhase.CREATING})
_LIVE_ONLY_PARAMS = frozenset({"timeout", "request_timeout", "max_workers", "deployment_id", "stream"})
"""LiteLLM's ``batch_completion`` arguments about its live calls; they mean nothing to a batch."""


# --- configuration ---------------------------------------------------------------------------------------


class Settings(msgspec.Struct, kw_only=True):
    """Process-wide defaults of the helpers; change them with ``configure`` or by assignment."""

    db: str | None = None  # None: ``default_db_path()``, read when used
    drive: bool = True  # run the jobs in a background thread of this process
    progress: bool = True  # in Jupyter, waiting helpers show the job's progress in the cell
    create_timeout: float = 120.0  # creating helpers return once the provider batches exist, or after this
    poll_interval: float = 5.0
    max_poll_interval: float = 300.0
    max_attempts: int = 3


settings = Settings()


def configure(
    *,
    db: str | os.PathLike[str] | None = None,
    drive: bool | None = None,
    poll_interval: float | None = None,
    max_poll_interval: float | None = None,
    max_attempts: int | None = None,
) -> Settings:
    """Change the defaults the helpers use (arguments left None stay as they are); returns the settings."""
    if db is not None:
        settings.db = os.fspath(db)
    if drive is not None:
        settings.drive = drive
    if poll_interval is not None:
        settings.poll_interval = poll_interval
    if max_poll_interval is not None:
        settings.max_poll_interval = max_poll_interval
    if max_attempts is not None:
        settings.max_attempts = max_attempts
    return settings


def default_db_path() -> Path:
    """``$ASYNCBATCH_DB``, else ``$XDG_DATA_HOME/asyncbatch/jobs.db``, else ``~/.local/share/asyncbatch/jobs.db``."""
    explicit = os.environ.get("ASYNCBATCH_DB")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home and os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "asyncbatch" / "jobs.db"


def _db(db: str | os.PathLike[str] | None) -> str:
    return os.fspath(db if db is not None else settings.db or default_db_path())


def provider_for_model(model: str) -> tuple[str, str]:
    """(provider, model) for a LiteLLM-style model name: ``anthropic/x`` or ``openai/x`` name the provider,
    ``claude-*`` goes to Anthropic, anything else to OpenAI."""
    prefix, sep, rest = model.partition("/")
    if sep and prefix in PROVIDER_NAMES:
        return prefix, rest
    return ("anthropic" if model.startswith("claude") else "openai"), model


# --- the objects users get -------------------------------------------------------------------------------


class BatchErrors(msgspec.Struct, kw_only=True):
    """Batch-level errors, as OpenAI's ``errors`` object."""

    object: str = "list"
    data: list[BatchError] = msgspec.field(default_factory=list)


class Batch(msgspec.Struct, kw_only=True):
    """A job seen as an OpenAI Batch object (the shape LiteLLM returns).

    ``request_counts`` supports ``counts["total"]`` and ``counts.get("completed", 0)``; it also counts
    ``in_flight``, ``pending`` and ``cancelled`` requests. ``output_file_id`` / ``error_file_id`` are set
    once the job has ended and name its successes / failures for ``file_content``.
    """

    id: str
    object: str = "batch"
    endpoint: str
    input_file_id: str | None = None
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: BatchErrors | None = None
    created_at: int
    in_progress_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    provider: str = "openai"

    def model_dump(self) -> dict[str, Any]:
        """The object as plain data (the pydantic method name LiteLLM and OpenAI code calls)."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data


class BatchList(msgspec.Struct, kw_only=True):
    """A page of batches, newest first, as OpenAI's list object."""

    object: str = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileObject(msgspec.Struct, kw_only=True):
    """An input file kept next to the store, as OpenAI's File object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileContent:
    """The content of a file, with the methods of the OpenAI SDK's binary response that LiteLLM returns."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")

    def read(self) -> bytes:
        return self.content

    def write_to_file(self, file: str | os.PathLike[str]) -> None:
        Path(file).write_bytes(self.content)


def _batch(job: Job, shards: Sequence[Shard]) -> Batch:
    """The OpenAI view of a job: statuses mapped, batch-level errors of its shards gathered."""
    counts = job.counts
    errors: list[BatchError] = []
    for shard in shards:
        for error in msgspec.convert(shard.errors, list[BatchError]):
            if error not in errors:
                errors.append(error)
    status = _status(job, counts, errors, created=any(s.batch_id for s in shards))
    ended = int(job.updated_at) if job.status.is_terminal else None
    started = [s.creating_at for s in shards if s.creating_at is not None]
    return Batch(
        id=job.id, endpoint=job.endpoint, input_file_id=job.metadata.get("input_file_id"),
        completion_window=job.completion_window, status=status.value,
        output_file_id=f"file-out-{job.id}" if ended and counts.completed else None,
        error_file_id=f"file-err-{job.id}" if ended and counts.failed + counts.cancelled else None,
        errors=BatchErrors(data=errors) if errors else None, created_at=int(job.created_at),
        in_progress_at=int(min(started)) if started else None,
        completed_at=ended if status is BatchStatus.COMPLETED else None,
        failed_at=ended if status is BatchStatus.FAILED else None,
        cancelled_at=ended if status is BatchStatus.CANCELLED else None,
        request_counts=counts, metadata=job.metadata or None, provider=job.provider,
    )


def _status(job: Job, counts: RequestCounts, errors: list[BatchError], *, created: bool = True) -> BatchStatus:
    """OpenAI's word for a job. ``failed`` is a job that ended with nothing done and batch-level errors
    (what OpenAI reports as a failed batch); a job whose requests failed one by one is ``completed``; a job with
    no provider batch yet (``created`` False) is still ``validating``."""
    if job.status is JobStatus.OPEN:
        return BatchStatus.VALIDATING
    if job.status is JobStatus.CANCELLED:
        return BatchStatus.CANCELLED
    if job.status is JobStatus.DONE:
        return BatchStatus.FAILED if errors and not counts.completed else BatchStatus.COMPLETED
    if job.cancel_requested:
        return BatchStatus.CANCELLING
    if not created:
        return BatchStatus.VALIDATING
    return BatchStatus.FINALIZING if not counts.pending and not counts.in_flight else BatchStatus.IN_PROGRESS


# --- the private event loop ------------------------------------------------------------------------------


class _Runtime:
    """One event loop in a daemon thread: runs the helpers' coroutines, holds one manager per store, and has
    its engine run the jobs the helpers create or read, in the background."""

    def __init__(self) -> None:
        ready: queue.Queue[BlockingPortal] = queue.Queue()

        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.put(portal)
                await portal.sleep_until_stopped()

        self._thread = threading.Thread(target=anyio.run, args=(serve,), name="asyncbatch-helpers", daemon=True)
        self._thread.start()
        self.portal = ready.get()
        self._managers: dict[str, BatchManager] = {}
        self._driving: set[tuple[str, str]] = set()
        self._failures: dict[tuple[str, str], Exception] = {}
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, str]](1000)
        _, (self._scope, self._stopped) = self.portal.start_task(self._supervise)

    def call(self, coroutine: Callable[[], Awaitable[T]]) -> T:
        return self.portal.call(coroutine)

    async def _supervise(self, *, task_status: anyio.abc.TaskStatus[tuple[anyio.CancelScope, anyio.Event]]) -> None:
        """Runs the drives; cancelling its scope stops them all (their store updates are shielded)."""
        stopped = anyio.Event()
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                task_status.started((scope, stopped))
                async for db, job_id in self._receive:
                    tg.start_soon(self._drive, db, job_id)
        stopped.set()

    async def _drive(self, db: str, job_id: str) -> None:
        key = (db, job_id)
        try:
            await (await self.manager(db)).engine.run([job_id])
        except Exception as exc:  # kept for the next helper call about this job; the store is consistent
            log.warning("job %s stopped: %s (the next call about it resumes it)", job_id, exc)
            self._failures[key] = exc
        finally:
            self._driving.discard(key)

    def is_driving(self, db: str, job_id: str) -> bool:
        return (db, job_id) in self._driving

    def drive(self, db: str, job: Job) -> None:
        """Have the engine run the job in the background unless it has ended, runs already, or driving is off.

        A failure of an earlier drive is raised here, once; the call after that tries again.
        """
        key = (db, job.id)
        failure = self._failures.pop(key, None)
        if failure is not None:
            raise failure
        if settings.drive and not job.status.is_terminal and key not in self._driving:
            self._driving.add(key)
            self._send.send_nowait(key)

    async def manager(self, db: str) -> BatchManager:
        """The one manager of a store in this process (its engine runs every drive of that store)."""
        manager = self._managers.get(db)
        if manager is None:
            manager = BatchManager(db, poll_interval=settings.poll_interval,
                                   max_poll_interval=settings.max_poll_interval)
            await manager.open()
            self._managers[db] = manager
        return manager

    async def provider(self, db: str, name: str, *, base_url: str | None, api_key: str | None) -> Provider:
        """A provider for new jobs (and for stored jobs of the same spec): a key given now is used from now on;
        it is never stored."""
        manager = await self.manager(db)
        made = create_provider(name, base_url=base_url, api_key=api_key)
        if api_key is None:
            spec = spec_of(made)
            await made.aclose()
            return manager.pool.get(spec)
        manager.pool.add(made)
        return made

    async def use_key(self, db: str, job: Job, api_key: str | None) -> None:
        """Let the job's default provider use a key given in this call (it is never stored)."""
        if api_key is None:
            return
        spec = job.spec(job.provider)
        made = create_provider(spec.name, base_url=spec.base_url, api_key=api_key, **spec.options)
        (await self.manager(db)).pool.add(made, spec)

    def close(self, grace: float = 10.0) -> None:
        """Cancel the drives (their store updates are shielded), close the managers, stop the loop.

        A drive that does not stop within ``grace`` seconds is left behind in the daemon thread rather
        than hanging the caller; the store stays consistent either way (every step is a transaction).
        """

        async def stop() -> bool:
            self._scope.cancel()
            with anyio.move_on_after(grace):
                await self._stopped.wait()
                for manager in self._managers.values():
                    await manager.aclose()
                self._managers.clear()
                return True
            return False

        if self.portal.call(stop):
            self.portal.call(self.portal.stop, False)
            self._thread.join(timeout=grace)
        else:
            log.warning("asyncbatch helpers: a job did not stop within %.0fs; leaving its thread behind", grace)


_runtime_lock = threading.Lock()
_current: _Runtime | None = None


def _runtime() -> _Runtime:
    global _current
    with _runtime_lock:
        if _current is None:
            _current = _Runtime()
            atexit.register(shutdown, grace=3.0)
        return _current


def shutdown(grace: float = 10.0) -> None:
    """Stop driving jobs in this process and close the stores (jobs stay in the store and can be resumed).

    Called at exit too; a drive that does not stop within ``grace`` seconds is abandoned, which is safe.
    """
    global _current
    with _runtime_lock:
        runtime, _current = _current, None
    if runtime is not None:
        runtime.close(grace)


def _both(impl: Callable[P, Coroutine[Any, Any, T]]) -> tuple[Callable[P, Coroutine[Any, Any, T]], Callable[P, T]]:
    """The async and the blocking public forms of a helper whose body runs on the private loop."""
    name = impl.__name__.lstrip("_")

    async def async_form(*args: P.args, **kwargs: P.kwargs) -> T:
        runtime = _runtime()
        return await anyio.to_thread.run_sync(runtime.call, functools.partial(impl, *args, **kwargs))

    def blocking_form(*args: P.args, **kwargs: P.kwargs) -> T:
        return _runtime().call(functools.partial(impl, *args, **kwargs))

    for form, form_name in ((async_form, "a" + name), (blocking_form, name)):
        functools.update_wrapper(form, impl)
        form.__name__ = form.__qualname__ = form_name
    blocking_form.__doc__ = f"Blocking form of ``a{name}`` (for scripts and notebooks). {impl.__doc__}"
    return async_form, blocking_form


# --- helpers (bodies run on the private loop) ------------------------------------------------------------


async def _submit(
    source: Any,
    *,
    provider: str,
    endpoint: str | None,
    completion_window: str,
    metadata: Mapping[str, str] | None,
    db: str | os.PathLike[str] | None,
    api_key: str | None,
    api_base: str | None,
    max_attempts: int | None,
    idempotency_key: str | None,
) -> tuple[str, Job]:
    """Store a job (nothing is sent before it is stored), have it run in the background, and return once its
    provider batches exist (uploaded and created), as a LiteLLM user expects of a created batch.

    An ``endpoint`` is checked on every line, except that a file mixing endpoints (chat completions and
    embeddings lines) becomes a mixed job instead of an error: it runs as one provider batch per endpoint.
    With ``idempotency_key`` a re-run (a notebook cell run again) returns the job it made the first time.
    """
    path = _db(db)
    runtime = _runtime()
    manager = await runtime.manager(path)
    chosen = await runtime.provider(path, provider, base_url=api_base, api_key=api_key)
    options: dict[str, Any] = {"completion_window": completion_window, "metadata": metadata,
                               "max_attempts": max_attempts or settings.max_attempts, "provider": chosen,
                               "idempotency_key": idempotency_key}
    try:
        job = await manager.submit(source, endpoint=endpoint, **options)
    except ValidationError as exc:
        if endpoint is None or exc.field != "url":
            raise
        job = await manager.submit(source, endpoint=None, **options)
    runtime.drive(path, job)
    # with driving off, a worker (``asyncbatch worker``) runs the job whenever it looks: nothing to wait for here
    return path, await _until_created(path, job) if settings.drive else job


async def _until_created(path: str, job: Job) -> Job:
    """The job once every request is in a created provider batch (or it has ended), within
    ``settings.create_timeout`` seconds; a drive that failed meanwhile is raised. The job goes on running in the
    background; nothing is lost if the process exits now (the next call about it, or a worker, finishes it)."""
    runtime = _runtime()
    store = (await runtime.manager(path)).store
    delay = 0.02
    failing_since: float | None = None
    with anyio.move_on_after(settings.create_timeout):
        while True:
            job = await store.get_job(job.id)
            runtime.drive(path, job)  # raises what an earlier drive of it failed with
            unsent = [s for s in await store.job_shards(job.id) if s.phase in _UNSENT]
            if job.status.is_terminal or (job.status is not JobStatus.OPEN and not job.counts.pending and not unsent):
                return job
            failing = next((s.last_error for s in unsent if s.last_error), None)
            if failing and failing_since is None:
                failing_since = time.monotonic()
            if failing and failing_since is not None and (
                not runtime.is_driving(path, job.id) or time.monotonic() - failing_since >= _FAILURE_SETTLES
            ):
                # a shard notes its error before its drive ends with it, so a failure for good is left a moment to
                # be raised by the drive itself (above); one the drive goes on retrying (the provider cannot be
                # reached even after the HTTP layer's retries) is said now, in one line: the job stays resumable
                runtime.drive(path, job)
                raise ConnectionFailedError(f"batch {job.id} could not be created yet: {failing} (it is kept and "
                                            "tried again in the background; retrieve it later)")
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
    log.warning("job %s: its batches were not all created within %.0fs; it goes on in the background",
                job.id, settings.create_timeout)
    return job


async def _batch_completion(
    model: str,
    messages: Sequence[Sequence[Mapping[str, Any]]],
    *,
    custom_llm_provider: str | None = None,
    provider: str | None = None,
    custom_ids: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
    completion_window: str = "24h",
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    **params: Any,
) -> Batch:
    """Submit one chat completion per message list as a batch job; returns the batch once it is created.

    ``custom_ids`` default to ``request-000000``, ``request-000001``, ... in the order of ``messages``.
    The provider is ``provider`` / ``custom_llm_provider``, else chosen by the model name (``claude-*``:
    Anthropic). Other keyword arguments (``temperature``, ``max_tokens``, ...) go into every request body;
    None values and LiteLLM's live-call options (``timeout``, ``max_workers``, ...) are dropped. With
    ``idempotency_key``, running the same call again returns the same batch instead of paying again.
    """
    chosen, model_name = provider_for_model(model)
    name = provider or custom_llm_provider or chosen
    ids = list(custom_ids) if custom_ids is not None else [f"request-{i:06d}" for i in range(len(messages))]
    if len(ids) != len(messages):
        raise ValidationError(f"{len(ids)} custom_ids for {len(messages)} message lists", field="custom_ids")
    extra = {k: v for k, v in params.items() if v is not None and k not in _LIVE_ONLY_PARAMS}
    lines = [
        {"custom_id": cid, "method": "POST", "url": CHAT_COMPLETIONS,
         "body": {"model": model_name, "messages": list(chat), **extra}}
        for cid, chat in zip(ids, messages, strict=True)
    ]
    path, job = await _submit(lines, provider=name, endpoint=CHAT_COMPLETIONS, completion_window=completion_window,
                              metadata=metadata, db=db, api_key=api_key, api_base=api_base,
                              max_attempts=max_attempts, idempotency_key=idempotency_key)
    return await _view(path, job)


async def _batch_completion_create(
    input_file_path: str | os.PathLike[str],
    endpoint: str | None = None,
    completion_window: str = "24h",
    metadata: Mapping[str, str] | None = None,
    *,
    custom_llm_provider: str | None = None,
    provider: str | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
) -> Batch:
    """Submit an OpenAI-format batch JSONL file as a batch job; returns the batch once it is created.

    Lines may mix endpoints (chat completions and embeddings) and models: each (endpoint, model) runs as
    its own provider batch, and each line's model picks its provider (``anthropic/...``, ``claude-*``).
    Without ``provider`` / ``custom_llm_provider`` the first line's model decides the default one.
    """
    name = provider or custom_llm_provider or await _provider_of_file(Path(input_file_path))
    path, job = await _submit(Path(input_file_path), provider=name, endpoint=endpoint,
                              completion_window=completion_window, metadata=metadata, db=db, api_key=api_key,
                              api_base=api_base, max_attempts=max_attempts, idempotency_key=idempotency_key)
    return await _view(path, job)


class _FirstLine(msgspec.Struct):
    body: dict[str, Any] = msgspec.field(default_factory=dict)
    params: dict[str, Any] = msgspec.field(default_factory=dict)


async def _provider_of_file(path: Path) -> str:
    """The provider for the model of the file's first request (a file that cannot be read is left to the
    validator, which names the problem and the line)."""
    try:
        async with await anyio.open_file(path, "rb") as f:
            first = (await f.readline()).strip()
        line = msgspec.json.decode(first, type=_FirstLine)
    except (OSError, msgspec.DecodeError):
        return "openai"
    model = line.body.get("model", line.params.get("model"))
    return provider_for_model(model)[0] if isinstance(model, str) else "openai"


async def _view(path: str, job: Job) -> Batch:
    return _batch(job, await (await _runtime().manager(path)).store.job_shards(job.id))


async def _find(path: str, batch_id: str) -> Job:
    """A job by its id, or by the id of one of its provider batches (``batch_...``, ``msgbatch_...``), as
    LiteLLM users keep them from earlier runs."""
    store = (await _runtime().manager(path)).store
    try:
        return await store.get_job(batch_id)
    except JobNotFoundError:
        found = await store.find_job(batch_id=batch_id)
        if found is None:
            raise JobNotFoundError(f"no batch {batch_id!r} in {path} (neither a job id nor a provider batch id)") \
                from None
        return await store.get_job(found.id)


async def _job_view(batch_id: str, db: str | os.PathLike[str] | None, api_key: str | None = None) -> Batch:
    path = _db(db)
    runtime = _runtime()
    job = await _find(path, batch_id)
    await runtime.use_key(path, job, api_key)
    runtime.drive(path, job)
    return await _view(path, job)


async def _batch_completion_retrieve(
    batch_id: str, *, db: str | os.PathLike[str] | None = None, api_key: str | None = None
) -> Batch:
    """The batch now, by job id or by one of its provider batch ids. A job left unfinished by an earlier
    process is resumed here (unless driving is off)."""
    return await _job_view(batch_id, db, api_key)


async def _batch_completion_list(
    limit: int = 10, after: str | None = None, *, db: str | os.PathLike[str] | None = None
) -> BatchList:
    """Batches in the store, newest first; ``after`` (a batch id) pages on. The result has ``.data``."""
    path = _db(db)
    store = (await _runtime().manager(path)).store
    jobs = sorted(await store.list_jobs(), key=lambda j: (j.created_at, j.id), reverse=True)
    start = 0
    if after is not None:
        start = next((i + 1 for i, job in enumerate(jobs) if job.id == after), len(jobs))
    page = jobs[start:start + limit]
    data = [_batch(job, await store.job_shards(job.id)) for job in page]
    return BatchList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                     has_more=start + limit < len(jobs))


async def _batch_completion_cancel(
    batch_id: str, *, db: str | os.PathLike[str] | None = None, api_key: str | None = None
) -> Batch:
    """Cancel: pending requests end cancelled, live provider batches are asked to stop; what already ran
    is collected (the job goes through ``cancelling`` to ``cancelled``)."""
    path = _db(db)
    runtime = _runtime()
    manager = await runtime.manager(path)
    job = await _find(path, batch_id)
    await runtime.use_key(path, job, api_key)
    job = await manager.cancel(job.id)
    runtime.drive(path, job)
    return await _view(path, job)


async def _wait(batch_id: str, db: str | os.PathLike[str] | None, max_wait: float | None) -> Batch:
    """Poll the store until the batch ends (whichever process drives it); a failed drive is raised. In Jupyter
    (``settings.progress``) the wait shows the job's progress in the cell, updated in place."""
    display = NotebookDisplay() if settings.progress and in_notebook() else None
    store = (await _runtime().manager(_db(db))).store
    async with anyio.create_task_group() as shown:
        ended = anyio.Event()
        if display is not None:
            shown.start_soon(functools.partial(follow, store, [batch_id], display, stop=ended))
        try:
            with anyio.fail_after(max_wait):
                while True:  # polled: another process may drive the job, with no event reaching this one
                    batch = await _job_view(batch_id, db)
                    if batch.status in TERMINAL_STATUSES:
                        break
                    await anyio.sleep(min(1.0, settings.poll_interval))
        finally:
            ended.set()
    return batch


async def _batch_completion_results(
    batch_id: str,
    output_path: str | os.PathLike[str] = "results.jsonl",
    *,
    wait: bool = True,
    max_wait: float | None = None,
    db: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the final result of every request to ``output_path`` in OpenAI's batch output format
    (Anthropic bodies become chat.completion bodies); returns the path.

    With ``wait`` (the default) it first waits for the batch to end (``TimeoutError`` after ``max_wait``
    seconds); without, it writes the results that are final so far.
    """
    path = _db(db)
    job = await _find(path, batch_id)
    if wait:
        await _wait(job.id, db, max_wait)
    await write_results(await _runtime().manager(path), job.id, output_path, fmt="openai")
    return Path(output_path)


async def _batch_completion_cost(batch_id: str, *, db: str | os.PathLike[str] | None = None) -> CostReport:
    """What the batch's billed results cost, what they would have cost live, and what was not priced."""
    path = _db(db)
    job = await _find(path, batch_id)
    return await job_cost((await _runtime().manager(path)).store, job.id)


# --- LiteLLM's Files + Batches names ---------------------------------------------------------------------


async def _create_file(
    file: str | os.PathLike[str] | bytes | IO[bytes] | tuple[str, Any],
    purpose: str = "batch",
    custom_llm_provider: str | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> FileObject:
    """Keep a batch input file next to the store (``<store>.files/``) for ``create_batch``.

    ``file`` is a path, bytes, a binary file object, or a ``(filename, content)`` tuple as in the OpenAI
    SDK. Nothing is sent anywhere: the file is validated when a batch is created from it.
    """
    filename, content = file if isinstance(file, tuple) else (None, file)
    file_id = f"file-{uuid.uuid4().hex[:24]}"
    dest = _files_dir(_db(db)) / f"{file_id}.jsonl"
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def copy() -> str:
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
                return filename or "input.jsonl"
            if isinstance(content, str | os.PathLike):
                with open(content, "rb") as src:
                    shutil.copyfileobj(src, out)
                return filename or Path(content).name
            shutil.copyfileobj(content, out)
            return filename or Path(str(getattr(content, "name", "input.jsonl"))).name

    name = await anyio.to_thread.run_sync(copy)
    return FileObject(id=file_id, bytes=dest.stat().st_size, created_at=int(time.time()), filename=name,
                      purpose=purpose)


def _files_dir(db: str) -> Path:
    return Path(db + ".files")


async def _create_batch(
    completion_window: str,
    endpoint: str,
    input_file_id: str,
    custom_llm_provider: str | None = None,
    metadata: Mapping[str, str] | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    **kwargs: Any,
) -> Batch:
    """LiteLLM's ``create_batch``: a batch job from a file made with ``create_file``.

    The provider is ``custom_llm_provider`` if given, else chosen by the first request's model.
    """
    source = _files_dir(_db(db)) / f"{input_file_id}.jsonl"
    if not source.is_file():
        raise NotFoundError(f"no file {input_file_id!r} (make one with create_file)")
    name = custom_llm_provider or await _provider_of_file(source)
    path, job = await _submit(source, provider=name, endpoint=endpoint, completion_window=completion_window,
                              metadata={**(metadata or {}), "input_file_id": input_file_id}, db=db,
                              api_key=api_key, api_base=api_base, max_attempts=None,
                              idempotency_key=kwargs.get("idempotency_key"))
    return await _view(path, job)


async def _retrieve_batch(
    batch_id: str,
    custom_llm_provider: str | None = None,
    metadata: Mapping[str, str] | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> Batch:
    """LiteLLM's ``retrieve_batch`` (the job knows its provider; ``custom_llm_provider`` is not needed)."""
    return await _job_view(batch_id, db, api_key)


async def _list_batches(
    after: str | None = None,
    limit: int | None = None,
    custom_llm_provider: str | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> BatchList:
    """LiteLLM's ``list_batches``: newest first, 20 per page by default, ``.data`` and ``.has_more``."""
    return await _batch_completion_list(limit=limit or 20, after=after, db=db)


async def _cancel_batch(
    batch_id: str,
    model: str | None = None,
    custom_llm_provider: str | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    api_key: str | None = None,
    **kwargs: Any,
) -> Batch:
    """LiteLLM's ``cancel_batch``."""
    return await _batch_completion_cancel(batch_id, db=db, api_key=api_key)


async def _file_content(
    file_id: str,
    custom_llm_provider: str | None = None,
    *,
    db: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> FileContent:
    """LiteLLM's ``file_content``: a batch's output file (successes) or error file (failures) as OpenAI
    batch output JSONL, or an input file made with ``create_file``. For a large job prefer
    ``batch_completion_results``, which streams to disk."""
    path = _db(db)
    for prefix, wanted in (("file-out-", True), ("file-err-", False)):
        if file_id.startswith(prefix):
            store = (await _runtime().manager(path)).store
            encoder = msgspec.json.Encoder()
            lines = [encoder.encode(output_line(r, fmt="openai"))
                     async for r in read_results(store, file_id[len(prefix):])
                     if (r.status is RequestState.SUCCEEDED) is wanted]
            return FileContent(b"".join(line + b"\n" for line in lines))
    source = _files_dir(path) / f"{file_id}.jsonl"
    if not source.is_file():
        raise NotFoundError(f"no file {file_id!r}")
    return FileContent(await anyio.Path(source).read_bytes())


def completion(*args: Any, **kwargs: Any) -> NoReturn:
    """LiteLLM's live (one request at a time, full price) call. asyncbatch sends batches only; the name exists so
    that code from LiteLLM's batch page, which imports it beside the batch helpers, runs with only the import
    changed. Calling it says where to go instead."""
    raise UnsupportedFeatureError(
        "asyncbatch sends batches only: for a live call use litellm.completion or the provider's SDK; "
        "for the same request at the batch price use batch_completion(model=..., messages=[messages])",
        field="completion",
    )


abatch_completion, batch_completion = _both(_batch_completion)
abatch_completion_create, batch_completion_create = _both(_batch_completion_create)
abatch_completion_retrieve, batch_completion_retrieve = _both(_batch_completion_retrieve)
abatch_completion_list, batch_completion_list = _both(_batch_completion_list)
abatch_completion_cancel, batch_completion_cancel = _both(_batch_completion_cancel)
abatch_completion_results, batch_completion_results = _both(_batch_completion_results)
abatch_completion_cost, batch_completion_cost = _both(_batch_completion_cost)
acreate_file, create_file = _both(_create_file)
acreate_batch, create_batch = _both(_create_batch)
aretrieve_batch, retrieve_batch = _both(_retrieve_batch)
alist_batches, list_batches = _both(_list_batches)
acancel_batch, cancel_batch = _both(_cancel_batch)
afile_content, file_content = _both(_file_content)

__all__ = [
    "Batch",
    "BatchErrors",
    "BatchList",
    "FileContent",
    "FileObject",
    "Settings",
    "abatch_completion",
    "abatch_completion_cancel",
    "abatch_completion_cost",
    "abatch_completion_create",
    "abatch_completion_list",
    "abatch_completion_results",
    "abatch_completion_retrieve",
    "acancel_batch",
    "acreate_batch",
    "acreate_file",
    "afile_content",
    "alist_batches",
    "aretrieve_batch",
    "batch_completion",
    "batch_completion_cancel",
    "batch_completion_cost",
    "batch_completion_create",
    "batch_completion_list",
    "batch_completion_results",
    "batch_completion_retrieve",
    "cancel_batch",
    "completion",
    "configure",
    "create_batch",
    "create_file",
    "default_db_path",
    "file_content",
    "list_batches",
    "provider_for_model",
    "retrieve_batch",
    "settings",
    "shutdown",
]
