"""Prometheus metrics of this process, with the standard ``prometheus-client`` library.

Counters move where things happen (the HTTP layer counts error answers, runners count polls, events count
batches created and results stored); gauges (jobs, batches, requests) are read from the store when scraped, so
they show the whole store, whichever worker did the work. ``serve_metrics`` is the ``/metrics`` and ``/healthz``
server of ``asyncbatch worker --metrics-port``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from .events import AnyEvent
    from .store.base import Store

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_ERRORS = Counter("asyncbatch_http_errors", "Error answers and failed connections of provider APIs",
                      ["provider", "status"], registry=REGISTRY)
POLLS = Counter("asyncbatch_polls", "Polls of provider batches", ["provider"], registry=REGISTRY)
BATCHES_CREATED = Counter("asyncbatch_batches_created", "Provider batches created (or adopted after a crash)",
                          registry=REGISTRY)
RESULTS_STORED = Counter("asyncbatch_results_stored", "Results stored, by what became of their request",
                         ["outcome"], registry=REGISTRY)
RESUBMITTED = Counter("asyncbatch_requests_resubmitted", "Requests put into a new batch after a retryable failure",
                      registry=REGISTRY)
JOBS = Gauge("asyncbatch_jobs", "Jobs in the store, by status", ["status"], registry=REGISTRY)
SHARDS = Gauge("asyncbatch_shards", "Shards (attempts at a provider batch) in the store, by phase", ["phase"],
               registry=REGISTRY)
BATCHES = Gauge("asyncbatch_batches", "Live provider batches, by their status at the provider", ["status"],
                registry=REGISTRY)
REQUESTS = Gauge("asyncbatch_requests", "Requests in the store, by state", ["state"], registry=REGISTRY)


def count_event(event: AnyEvent) -> None:
    """Move the counters an engine event stands for."""
    from .events import BatchCreated, RequestsResubmitted, ResultsIngested

    if isinstance(event, BatchCreated):
        BATCHES_CREATED.inc()
    elif isinstance(event, ResultsIngested):
        RESULTS_STORED.labels("succeeded").inc(event.succeeded)
        RESULTS_STORED.labels("failed").inc(event.failed)
        RESULTS_STORED.labels("resubmitted").inc(event.resubmitted)
    elif isinstance(event, RequestsResubmitted):
        RESUBMITTED.inc(event.count)


async def render(store: Store) -> bytes:
    """The text exposition, with the gauges read from the store now."""
    stats = await store.stats()
    for gauge, counts in ((JOBS, stats.jobs), (SHARDS, stats.shards), (BATCHES, stats.batches),
                          (REQUESTS, stats.requests)):
        gauge.clear()
        for label, value in counts.items():
            gauge.labels(label).set(value)
    return generate_latest(REGISTRY)


@asynccontextmanager
async def serve_metrics(store: Store, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``/metrics`` and ``/healthz`` while the context is open; yields the bound port."""
    from aiohttp import web

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=await render(store), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        await store.ping()  # healthy: the worker's loop runs and its store answers
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
