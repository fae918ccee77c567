"""The ``asyncbatch`` command line.

Imports of the engine are lazy so that ``asyncbatch --help`` starts fast. Every failure is one line on
stderr and a non-zero exit, never a traceback; API keys come from the environment only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import checks
from .errors import ValidationError

if TYPE_CHECKING:
    from .manager import BatchManager
    from .progress import Display

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DB_ENV = "ASYNCBATCH_DB"

#: The commands that only read the store.
READING_COMMANDS = frozenset({"status", "list", "watch", "cost", "results"})

T = TypeVar("T")


def _checked(parse: Callable[[str], T], check: Callable[[T, str], object], what: str) -> Callable[[str], T]:
    """An argparse type: the option's text parsed, then checked (``asyncbatch.checks``). A bad value is refused
    while parsing, naming the option, with exit status 2."""

    def convert(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        try:
            check(value, "")
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None
        return value

    convert.__name__ = what  # argparse names the type in some messages
    return convert


def _url(text: str, *, credentials: bool) -> str:
    """A URL option; its text is never echoed (it may hold a key), only its redacted form."""
    try:
        return checks.check_url(text, field="", credentials=credentials)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


_seconds = _checked(float, checks.positive, "a number of seconds")
_count = _checked(int, checks.whole_number, "a whole number")
_attempts = _checked(int, checks.max_attempts, "a whole number")
_port = _checked(int, checks.port, "a port number")
_zero_or_more = _checked(float, checks.non_negative, "a number of seconds")


def _pacing_options(p: argparse.ArgumentParser) -> None:
    """Options of ``run`` and ``worker`` that pace the provider calls and the retries of many batches."""
    p.add_argument("--poll-rate", type=_seconds, default=10.0, metavar="CALLS",
                   help="calls a second at most spent polling one provider, all its batches together (default 10)")
    p.add_argument("--retry-window", type=_zero_or_more, default=30.0, metavar="SECONDS",
                   help="how long failed requests wait for the failures of the job's other batches still out, "
                        "to be sent again together (default 30; 0: at once)")


def build_parser() -> argparse.ArgumentParser:
    from .providers import PROVIDER_NAMES

    providers = ", ".join(PROVIDER_NAMES)
    parser = argparse.ArgumentParser(
        prog="asyncbatch",
        description=f"Durable client for LLM provider batch APIs ({providers}) with a local SQLite job store. "
                    "Each provider's key comes from its own environment variable (OPENAI_API_KEY, "
                    "ANTHROPIC_API_KEY, GROQ_API_KEY...), never from another provider's.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more: -v what happens to each job, -vv asyncbatch's debug lines, -vvv also the "
                             "libraries' (the database driver's show prompts and results)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_db(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", metavar="STORE",
                       help=f"the job store: a SQLite file, sqlite:///path, or postgresql://user@host/db "
                            f"(default: ${DB_ENV})")
        return p

    p = with_db(sub.add_parser("submit", help="validate and store a JSONL file as a job; prints the job id"))
    p.add_argument("file", type=Path, metavar="FILE.jsonl")
    p.add_argument("--provider", default="openai", choices=PROVIDER_NAMES, metavar="PROVIDER",
                   help=f"one of {providers} (default: openai)")
    p.add_argument("--base-url", type=partial(_url, credentials=False),
                   help="provider base URL (default: from the environment, else the public API); never with a "
                        "key in it: keys come from the environment")
    p.add_argument("--api-key-env", metavar="NAME",
                   help="read the provider's key from environment variable NAME (recorded with the job, the key "
                        "never is; default: the provider's own variable, such as OPENAI_API_KEY)")
    p.add_argument("--endpoint", help="every line must be for this endpoint (default: any, mixed allowed)")
    p.add_argument("--completion-window", default="24h")
    p.add_argument("--metadata", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-attempts", type=_attempts, default=3, help="attempts per request, 1 to 50")
    p.add_argument("--job-id", help="choose the job id (default: generated)")

    p = with_db(sub.add_parser("run", aliases=["wait"],
                               help="drive unfinished jobs (or the named ones) to the end, resuming; `wait JOB` "
                                    "is the same for one job"))
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    p.add_argument("--poll-interval", type=_seconds, default=5.0,
                   help="shortest interval between polls of a batch (seconds, above 0)")
    p.add_argument("--max-poll-interval", type=_seconds, default=300.0,
                   help="longest interval between polls (not below --poll-interval)")
    p.add_argument("--max-requests-per-batch", type=_count, help="shard below this many requests per batch")
    p.add_argument("--max-bytes-per-batch", type=_count, help="shard below this many bytes per batch")
    p.add_argument("--ingest-chunk", type=_count,
                   help="results committed per transaction, at most (default: the engine's 10,000; "
                        "16 MiB of result bodies also ends one)")
    p.add_argument("--lease-seconds", type=_seconds, default=60.0,
                   help="how long another process waits before taking over the batches of one that stopped "
                        "answering (a dead one's are taken over at once)")
    _pacing_options(p)
    p.add_argument("--base-url", type=partial(_url, credentials=False),
                   help="send the jobs' batches not yet created to this base URL from now on (repoints their "
                        "default provider, e.g. after a wrong one at submit); never with a key in it")
    p.add_argument("--api-key-env", metavar="NAME", help="from now on, read the jobs' key from variable NAME")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress on stderr (default: when stderr is a terminal)")

    p = with_db(sub.add_parser("worker", help="run every job of the store, and every job submitted later, until "
                                              "SIGTERM/SIGINT (a long-running worker; start several on one store)"))
    p.add_argument("--poll-interval", type=_seconds, default=5.0,
                   help="shortest interval between polls of a batch (seconds, above 0)")
    p.add_argument("--max-poll-interval", type=_seconds, default=300.0,
                   help="longest interval between polls (not below --poll-interval)")
    p.add_argument("--lease-seconds", type=_seconds, default=60.0,
                   help="how long another worker waits before taking over the batches of one that stopped "
                        "answering (a dead one's are taken over at once)")
    p.add_argument("--max-requests-per-batch", type=_count, help="shard below this many requests per batch")
    p.add_argument("--max-bytes-per-batch", type=_count, help="shard below this many bytes per batch")
    _pacing_options(p)
    p.add_argument("--max-jobs", type=_count, help="drive at most this many jobs at once (default: all)")
    p.add_argument("--metrics-port", type=_port, metavar="PORT",
                   help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (and /healthz)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics server")
    p.add_argument("--config", metavar="proxy.yaml",
                   help="the gateway's config: the keys its batches' routes name (literal keys included)")

    p = with_db(sub.add_parser("proxy", help="serve the batch gateway: OpenAI's /v1/files and /v1/batches for "
                                             "teams with virtual keys, configured like LiteLLM's proxy"))
    p.add_argument("--config", required=True, metavar="proxy.yaml", help="model_list and general_settings")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4000, help="0: any free port (the line printed names it)")
    p.add_argument("--no-worker", action="store_true",
                   help="do not run batches here: leave them to `asyncbatch worker --config` processes")
    p.add_argument("--poll-interval", type=float, default=5.0, help="shortest interval between polls of a batch")
    p.add_argument("--max-poll-interval", type=float, default=300.0)

    p = with_db(sub.add_parser("status", help="show a job's status and request counts"))
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = with_db(sub.add_parser("list", help="list the jobs in the store"))
    p.add_argument("--json", action="store_true")

    p = with_db(sub.add_parser("watch", help="follow a job run by any process: live progress, or its events"))
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--events", action="store_true", help="print each event as a JSON line on stdout")
    p.add_argument("--interval", type=_seconds, default=1.0, help="seconds between reads of the store")
    p.add_argument("--webhook", metavar="URL", type=partial(_url, credentials=True),
                   help="POST every event to URL (see --webhook-events); tried a few times per event, and a "
                        "delivery that still fails stops the watch (run it again to resume)")
    p.add_argument("--webhook-events", nargs="*", metavar="TYPE",
                   help="event types to POST (default: all), e.g. JobFinished")
    p.add_argument("--webhook-secret-env", metavar="VAR",
                   help="sign webhooks with the secret in environment variable VAR (Standard Webhooks)")

    p = with_db(sub.add_parser("cost", help="what a job cost, and what it would have cost live"))
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("--json", action="store_true", help="machine-readable output (amounts as decimal strings)")

    p = with_db(sub.add_parser("cancel", help="cancel a job (pending requests and live batches)"))
    p.add_argument("job_id", metavar="JOB_ID")

    p = with_db(sub.add_parser("results", help="write the final result of every custom_id as JSONL"))
    p.add_argument("job_id", metavar="JOB_ID")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.jsonl",
                   help="where to write; - for standard output (a FIFO or device is written into, not replaced)")
    p.add_argument("--format", choices=["native", "openai"], default="native",
                   help="response bodies as the provider sent them, or as OpenAI chat.completion bodies")
    p.add_argument("--all-attempts", action="store_true", help="one line per attempt instead of the final one")

    p = sub.add_parser("db", help="the job store itself: upgrade its schema, copy it into another store")
    actions = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    with_db(actions.add_parser("upgrade", help="bring the store's schema up to this asyncbatch's version (stop "
                                               "older workers first); an empty PostgreSQL database gets it"))
    p = actions.add_parser("copy", help="copy a store (stop its workers first) into a new one, e.g. a SQLite file "
                                        "into PostgreSQL: jobs, requests, results and in-flight batches, which "
                                        "carry on there")
    p.add_argument("--from", dest="source", required=True, metavar="STORE",
                   help="the store to copy: a SQLite file, sqlite:///path, or postgresql://...")
    p.add_argument("--to", dest="target", required=True, metavar="STORE",
                   help="a store that holds no job yet; its schema is created or upgraded first")

    emulator = sub.add_parser("emulator", help="run the local emulator of the provider batch APIs")
    from .emulator import cli as emulator_cli

    emulator_cli.configure_parser(emulator)

    p = sub.add_parser("demo", help="a real job on the built-in emulator: no key, no network")
    p.add_argument("--requests", type=_count, default=1200)
    p.add_argument("--dir", type=Path, default=Path("demo-output"), help="where the store and results go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "wait", "worker") and args.max_poll_interval < args.poll_interval:
        parser.error(f"argument --max-poll-interval: must not be below --poll-interval ({args.poll_interval:g}), "
                     f"got {args.max_poll_interval:g}")
    _configure_logging(args.verbose)
    if "db" in args:
        try:
            args.db = store_path(args.db)
        except ValueError as exc:
            print(f"asyncbatch: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "emulator":
        from .emulator import cli as emulator_cli

        return int(emulator_cli.run(args))
    command: Callable[[argparse.Namespace], Awaitable[int]] = _COMMANDS[args.command]
    try:
        import anyio

        return anyio.run(command, args)
    except KeyboardInterrupt:
        print("asyncbatch: interrupted; the store is consistent, run again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one line, no traceback: users see what to fix
        error = _reportable(exc)
        if error is None:
            raise
        notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
        print(f"asyncbatch: error: {error}{notes}", file=sys.stderr)
        return EXIT_ERROR


def _reportable(exc: BaseException) -> BaseException | None:
    """The error to show in one line: ours, or the system's (a file, a value), also from inside the
    exception groups that task groups wrap errors in; None for a bug, which keeps its traceback."""
    from .errors import AsyncBatchError

    if isinstance(exc, BaseExceptionGroup):
        return next((e for e in map(_reportable, exc.exceptions) if e is not None), None)
    return exc if isinstance(exc, AsyncBatchError | OSError | ValueError) else None


def _configure_logging(verbose: int) -> None:
    """Our loggers at the level asked for; the libraries' stay at WARNING below ``-vvv``: aiosqlite logs every
    statement with its parameters at DEBUG, which are the prompts and the results."""
    import logging

    ours = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=logging.DEBUG if verbose >= 3 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("asyncbatch").setLevel(ours)


def store_path(db: str | None) -> str:
    """The job store a command works on: ``--db``, else ``$ASYNCBATCH_DB`` (the one place that decides it)."""
    if db is not None:
        return db
    if from_env := os.environ.get(DB_ENV):
        return from_env if "://" in from_env else os.path.expanduser(from_env)
    raise ValueError(f"which job store? pass --db STORE or set {DB_ENV}")


def _existing_store(url: str) -> str:
    """A store that must exist already (reading commands never create one)."""
    from .errors import StoreError
    from .store import is_postgres_url, sqlite_path

    if not is_postgres_url(url) and not Path(sqlite_path(url)).exists():
        raise StoreError(f"no job store at {url}")
    return url


def _manager(args: argparse.Namespace, **options: Any) -> BatchManager:
    """The manager of an existing store; a SQLite one is opened read-only for the commands that only read it
    (so they work on a read-only mount or another user's readable file, and change nothing)."""
    from .manager import BatchManager
    from .store import is_postgres_url, open_store

    url = _existing_store(args.db)
    reading = {"read_only": True} if args.command in READING_COMMANDS and not is_postgres_url(url) else {}
    return BatchManager(open_store(url, **reading), **options)


async def _submit(args: argparse.Namespace) -> int:
    from .errors import ValidationError
    from .manager import BatchManager
    from .providers import create_provider

    metadata: dict[str, str] = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"--metadata takes KEY=VALUE, got {item!r}", field="metadata")
        metadata[key] = value
    provider = create_provider(args.provider, base_url=args.base_url, key_env=args.api_key_env)
    async with BatchManager(args.db, provider=provider, api_key_env=args.api_key_env) as bm:
        job = await bm.submit(
            args.file, endpoint=args.endpoint, completion_window=args.completion_window, metadata=metadata,
            max_attempts=args.max_attempts, job_id=args.job_id,
            warn=lambda message: print(f"asyncbatch: warning: {message}", file=sys.stderr),
        )
    print(f"stored {job.counts.total} requests as job {job.id}", file=sys.stderr)
    print(job.id)
    return 0


def _display(wanted: bool | None) -> Display | None:
    """The progress display for ``--progress`` / ``--no-progress`` / automatic (a terminal or Jupyter)."""
    from .progress import TerminalDisplay, auto_display

    if wanted is None:
        return auto_display(sys.stderr)
    return TerminalDisplay(sys.stderr) if wanted else None


async def _run(args: argparse.Namespace) -> int:
    import logging
    import signal
    from functools import partial

    import anyio

    from .events import log_events
    from .model import JobStatus
    from .progress import follow

    tuning = {"ingest_chunk": args.ingest_chunk} if args.ingest_chunk else {}
    async with _manager(
        args, poll_interval=args.poll_interval, max_poll_interval=args.max_poll_interval,
        max_requests_per_batch=args.max_requests_per_batch, max_bytes_per_batch=args.max_bytes_per_batch,
        lease_seconds=args.lease_seconds, poll_rate=args.poll_rate, retry_window=args.retry_window, **tuning,
    ) as bm:
        stopped_by: list[str] = []

        async def stop_on_signal(scope: anyio.CancelScope) -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    stopped_by.append(signal.Signals(signum).name)
                    scope.cancel()
                    return

        display = _display(args.progress)
        job_ids = args.job_ids or [job.id for job in await bm.list_jobs() if not job.status.is_terminal]
        if args.base_url or args.api_key_env:
            for job_id in job_ids:
                await bm.repoint(job_id, base_url=args.base_url, api_key_env=args.api_key_env)
        if not job_ids:
            print(f"asyncbatch: nothing to run: every job in {args.db} has ended", file=sys.stderr)
            return 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, tg.cancel_scope)
            if args.verbose:  # -v: one line per batch event, the story a headless run tells
                tg.start_soon(log_events, bm.events, logging.getLogger("asyncbatch"))
            done = anyio.Event()
            async with anyio.create_task_group() as shown:  # left when the display has drawn the end
                if display is not None:
                    shown.start_soon(partial(follow, bm.store, job_ids, display, stop=done))
                jobs = await bm.run(job_ids)
                done.set()
            tg.cancel_scope.cancel()
        if stopped_by:
            print(f"asyncbatch: stopped by {stopped_by[0]}; the store is consistent, run again to resume",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
        for job in jobs:
            c = job.counts
            print(f"{job.id} {job.status.value}: {c.completed} succeeded, {c.failed} failed, "
                  f"{c.cancelled} cancelled of {c.total}")
            if strays := len(await bm.orphans(job.id)):
                print(f"asyncbatch: {job.id}: {_strays(strays)}", file=sys.stderr)
        return 0 if all(job.status in (JobStatus.DONE, JobStatus.CANCELLED) for job in jobs) else EXIT_ERROR


async def _status(args: argparse.Namespace) -> int:
    import msgspec

    async with _manager(args) as bm:
        job = await bm.status(args.job_id)
        shards = await bm.shards(args.job_id)
        strays = len(await bm.orphans(args.job_id))
    if args.json:
        payload = _shown_job(job)
        payload["orphans"] = strays
        payload["batches"] = [
            {"id": s.batch_id, "status": s.batch_status, "phase": s.phase, "requests": s.request_count,
             "attempt": s.attempt}
            for s in shards
        ]
        print(msgspec.json.encode(payload).decode())
        return 0
    c = job.counts
    endpoint = "* = mixed endpoints" if job.endpoint == "*" else job.endpoint
    print(f"job {job.id} ({job.provider}, {endpoint}): {job.status.value}"
          f"{' (cancel requested)' if job.cancel_requested and job.status.value != 'cancelled' else ''}")
    print(f"  requests: {c.total} total, {c.completed} succeeded, {c.failed} failed, {c.in_flight} in flight, "
          f"{c.pending} pending, {c.cancelled} cancelled")
    for s in shards:
        print(f"  shard {s.id} attempt {s.attempt}: {s.phase.value}, batch {s.batch_id or '-'} "
              f"{s.batch_status.value if s.batch_status else ''} ({s.request_count} requests)")
    if strays:
        print(f"  {_strays(strays)}")
    return 0


def _shown_job(job: Any) -> dict[str, Any]:
    """A job as JSON to print, its base URLs shown redacted when they carry credentials (a store written before
    they were refused may hold one)."""
    import msgspec

    payload: dict[str, Any] = msgspec.to_builtins(job)
    for holder in (payload, *payload.get("routes", {}).values()):
        if holder.get("base_url"):
            holder["base_url"] = checks.shown_url(holder["base_url"])
    return payload


def _strays(count: int) -> str:
    """The report of result lines the provider returned for custom_ids the job does not have."""
    return (f"{count} result lines for custom_ids this job does not know were kept aside "
            "(BatchManager.orphans() returns them)")


async def _list(args: argparse.Namespace) -> int:
    import msgspec

    async with _manager(args) as bm:
        jobs = await bm.list_jobs()
    if args.json:
        payload = [_shown_job(job) for job in jobs]
        print(msgspec.json.encode(payload).decode())
        return 0
    for job in jobs:
        c = job.counts
        print(f"{job.id}\t{job.status.value}\t{job.provider}\t{c.completed}/{c.total} succeeded, {c.failed} failed")
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with _manager(args) as bm:
        job = await bm.cancel(args.job_id)
    print(f"{job.id}: cancel requested ({job.status.value}); `asyncbatch run` collects what already ran")
    return 0


async def _results(args: argparse.Namespace) -> int:
    from .export import STDOUT, write_results

    async with _manager(args) as bm:
        count = await write_results(bm, args.job_id, args.output, fmt=args.format, all_attempts=args.all_attempts)
        job = await bm.status(args.job_id)
    where = "standard output" if str(args.output) == STDOUT else args.output
    print(f"wrote {count} results to {where}", file=sys.stderr)
    if unfinished := job.counts.pending + job.counts.in_flight:
        print(f"asyncbatch: job {job.id} is {job.status.value}: {unfinished} of {job.counts.total} requests are "
              f"still unfinished and not in the output (`asyncbatch wait {job.id}` drives it to the end)",
              file=sys.stderr)
    return 0


async def _watch(args: argparse.Namespace) -> int:
    """Progress on a terminal, events as JSON lines with ``--events``; both read the store, so the job may
    be run by another process. Exits 0 once the job has ended."""
    import os
    from functools import partial

    import anyio
    import msgspec

    from .progress import follow
    from .webhooks import WebhookSender, relay

    async with _manager(args) as bm:
        job = await bm.status(args.job_id)
        webhook = None
        if args.webhook:
            secret = os.environ.get(args.webhook_secret_env) if args.webhook_secret_env else None
            if args.webhook_secret_env and not secret:
                raise ValueError(f"environment variable {args.webhook_secret_env} is not set")
            webhook = WebhookSender(args.webhook, secret=secret, events=args.webhook_events)
        display = None if args.events else _display(None)
        encoder = msgspec.json.Encoder()

        def show(event: object) -> None:
            if args.events:
                sys.stdout.write(encoder.encode(event).decode() + "\n")
                sys.stdout.flush()

        async with anyio.create_task_group() as tg:
            done = anyio.Event()
            if display is not None:
                tg.start_soon(partial(follow, bm.store, [job.id], display, interval=args.interval, stop=done))
            finished = await relay(bm.watch(job.id, poll_interval=args.interval), callback=show, webhook=webhook)
            done.set()
    if finished is not None and not args.events:
        c = finished.counts
        print(f"{job.id} {finished.status.value}: {c.completed} succeeded, {c.failed} failed, "
              f"{c.cancelled} cancelled of {c.total}")
    return 0


async def _cost(args: argparse.Namespace) -> int:
    import msgspec

    from .cost import job_cost

    async with _manager(args) as bm:
        report = await job_cost(bm.store, args.job_id)
    if args.json:
        payload = msgspec.to_builtins(report)
        payload.update(savings=str(report.savings), unpriced_models=report.unpriced_models)
        print(msgspec.json.encode(payload).decode())
    else:
        print(report.summary())
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return await run_demo(args.dir, requests=args.requests)


async def _db(args: argparse.Namespace) -> int:
    from .store import open_store
    from .store.sql import SCHEMA_VERSION

    if args.db_command == "copy":
        return await _db_copy(args)
    store = open_store(_existing_store(args.db))
    await store.open()
    await store.close()
    was = store.migrated_from
    if was is None:
        print(f"{store.url}: schema version {SCHEMA_VERSION}, nothing to do")
    elif was == 0:
        print(f"{store.url}: created at schema version {SCHEMA_VERSION}")
    else:
        print(f"{store.url}: schema version {was} -> {SCHEMA_VERSION}")
    return 0


async def _db_copy(args: argparse.Namespace) -> int:
    """Copy every row into a store that holds no job yet, once no live worker holds a lease on the source: the
    copy's shards are free, and a worker on the new store carries on with each (a batch in flight is polled
    there, a shard mid-create is reconciled by its token)."""
    from .engine.leases import owner_is_dead
    from .errors import StoreError
    from .model import ShardPhase
    from .store import open_store

    source, target = open_store(_existing_store(store_path(args.source))), open_store(store_path(args.target))
    if source.url == target.url:
        raise StoreError(f"--from and --to name the same store: {source.url}")
    await source.open()
    try:
        for job_id in await source.unfinished_job_ids():
            if busy := {o for o in await source.lease_holders(job_id) if not owner_is_dead(o)}:
                raise StoreError(f"job {job_id} is being run by {', '.join(sorted(busy))}: stop the workers on "
                                 f"{source.url} first (or wait until their leases lapse), then copy")
        in_flight = sum(n for phase, n in (await source.stats()).shards.items()
                        if phase in (ShardPhase.CREATING, ShardPhase.SUBMITTED, ShardPhase.ENDED))
        await target.open()
        try:
            counts = await target.load(source.dump())
        finally:
            await target.close()
    finally:
        await source.close()
    print(f"copied {counts.get('jobs', 0)} jobs, {counts.get('requests', 0)} requests, "
          f"{counts.get('results', 0)} results and {counts.get('shards', 0)} shards ({in_flight} with a batch at "
          f"the provider) from {source.url} to {target.url}; point every process at the new store")
    return 0


async def _worker(args: argparse.Namespace) -> int:
    from .engine import EngineConfig
    from .worker import run_worker

    config = EngineConfig(
        poll_interval=args.poll_interval, max_poll_interval=max(args.max_poll_interval, args.poll_interval),
        lease_seconds=args.lease_seconds, max_requests_per_batch=args.max_requests_per_batch,
        max_bytes_per_batch=args.max_bytes_per_batch, poll_rate=args.poll_rate, retry_window=args.retry_window,
    )
    keys = None
    if args.config:
        from .gateway import load_config

        keys = load_config(args.config).keys
    return await run_worker(args.db, config=config, max_jobs=args.max_jobs, metrics_port=args.metrics_port,
                            metrics_host=args.metrics_host, keys=keys)


async def _proxy(args: argparse.Namespace) -> int:
    from .gateway import run_proxy

    return await run_proxy(args.config, args.db, host=args.host, port=args.port, worker=not args.no_worker,
                           poll_interval=args.poll_interval, max_poll_interval=args.max_poll_interval)


_COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "submit": _submit,
    "worker": _worker,
    "proxy": _proxy,
    "run": _run,
    "wait": _run,
    "status": _status,
    "list": _list,
    "cancel": _cancel,
    "watch": _watch,
    "cost": _cost,
    "results": _results,
    "demo": _demo,
    "db": _db,
}

if __name__ == "__main__":
    sys.exit(main())
