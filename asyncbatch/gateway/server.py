"""``asyncbatch proxy``: the gateway served until SIGTERM, with the engine in the same process unless
``--no-worker`` leaves the work to ``asyncbatch worker --config`` processes on the same store."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from aiohttp import web

from ..events import log_events
from ..manager import BatchManager
from ..store.base import Store
from .app import build_app
from .config import ProxyConfig, load_config
from .service import Gateway

log = logging.getLogger("asyncbatch")


@asynccontextmanager
async def serving(
    config: ProxyConfig,
    db: str | Store,
    *,
    host: str = "127.0.0.1",
    port: int = 4000,
    worker: bool = True,
    poll_interval: float = 5.0,
    max_poll_interval: float = 300.0,
) -> AsyncIterator[str]:
    """The gateway accepting connections (and, with ``worker``, the engine running its batches) while the
    context is open; yields its base URL (``port=0`` picks a free port)."""
    manager = BatchManager(db, router=config.router(), keys=config.keys, poll_interval=poll_interval,
                           max_poll_interval=max(max_poll_interval, poll_interval))
    async with manager:
        gateway = Gateway(manager, config)
        await gateway.prepare()
        runner = web.AppRunner(build_app(gateway), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound = runner.addresses[0][1] if runner.addresses else port
            if worker:
                manager.start()
            async with anyio.create_task_group() as tg:
                tg.start_soon(log_events, manager.events, log)
                yield f"http://{host}:{bound}"
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()


async def run_proxy(
    config_path: str,
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 4000,
    worker: bool = True,
    poll_interval: float = 5.0,
    max_poll_interval: float = 300.0,
) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status."""
    config = load_config(config_path)
    if config.ignored:
        print(f"asyncbatch proxy: warning: {config.path}: ignoring keys the gateway does not use: "
              f"{', '.join(config.ignored)}", file=sys.stderr)
    stopped_by = "an error"
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with serving(config, db, host=host, port=port, worker=worker, poll_interval=poll_interval,
                           max_poll_interval=max_poll_interval) as url:
            print(f"asyncbatch proxy listening on {url}", flush=True)
            async for signum in signals:
                stopped_by = signal.Signals(signum).name
                break
    print(f"asyncbatch proxy: stopped by {stopped_by}; the store is consistent", file=sys.stderr)
    return 0
