"""``asyncbatch worker``: a long-running process that runs every job of a store, and every job submitted later.

Start as many as you like on one store (on PostgreSQL, on as many hosts): leases share the work. SIGTERM or
SIGINT stops taking work, gives the leases back and exits 0 within seconds, leaving the store consistent; another
worker (or this one, restarted) carries on where it stopped. ``-v`` logs one line per batch event.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import AsyncExitStack

import anyio

from .engine import Engine, EngineConfig, ProviderPool
from .engine.pool import KeyResolver
from .events import log_events
from .store import open_store

log = logging.getLogger("asyncbatch")


async def run_worker(
    db: str,
    *,
    config: EngineConfig | None = None,
    max_jobs: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    keys: KeyResolver | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status. ``keys`` resolves the providers' keys (a
    gateway's config: ``asyncbatch worker --config proxy.yaml``), else they come from the environment."""
    from .metrics import count_event, serve_metrics

    store = open_store(db)
    await store.open()  # a worker started where no SQLite store exists yet creates it
    engine = Engine(store, config=config, pool=ProviderPool(keys=keys) if keys is not None else None)
    stopped_by: list[str] = []
    try:
        async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
            if metrics_port is not None:
                port = await stack.enter_async_context(serve_metrics(store, metrics_host, metrics_port))
                print(f"asyncbatch worker: metrics on http://{metrics_host}:{port}/metrics", file=sys.stderr)

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        stopped_by.append(signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            tg.start_soon(log_events, engine.events, log, count_event)
            await tg.start(lambda task_status: engine.serve(max_jobs=max_jobs, task_status=task_status))
            print(f"asyncbatch worker: serving {store.url} as {engine.owner}", file=sys.stderr)
    finally:
        with anyio.CancelScope(shield=True):
            await engine.pool.aclose()
            await store.close()
    if stopped_by:
        print(f"asyncbatch worker: stopped by {stopped_by[0]}; the store is consistent", file=sys.stderr)
    return 0
