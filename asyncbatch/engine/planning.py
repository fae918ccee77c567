"""Sharding: which pending requests go together into the next provider batch.

A shard holds one route (provider), endpoint and model, stays under the provider's limits in requests and bytes,
and takes requests in input order. Planning reads the pending requests a page at a time inside one planning
session of the store, so memory holds one page whatever the size of the job, and the shard's membership is
committed before any file is built (invariant 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import PlanningConflictError
from ..model import PlannedShard, ShardLimits, WireIdFn
from ..store.base import Store

log = logging.getLogger("asyncbatch")

PLAN_PAGE = 5000  # pending requests read at a time while planning


class Held:
    """What ``plan_shard`` returns when it left failed requests pending to be gathered with others."""


HELD = Held()


async def plan_shard(
    store: Store, job_id: str, limits: Callable[[str], ShardLimits], wire_id: Callable[[str], WireIdFn], *,
    hold_retries: bool = False,
) -> PlannedShard | Held | None:
    """Put pending requests of the job into one new shard; None when none is pending.

    ``limits(route)`` and ``wire_id(route)`` come from the provider of the route the first pending request is
    for. Each request's attempt goes up by one. One shard per session, so that the engine uploads a shard while
    it plans the next. With ``hold_retries``, requests that all failed before and do not fill a batch are left
    pending (``HELD``): the engine gathers them with the failures still to come back (see ``retry_window``). A
    session the store could not finish because another worker took its requests meanwhile
    (``PlanningConflictError``) stored nothing: None, and the job's next step plans again.
    """
    try:
        return await _plan(store, job_id, limits, wire_id, hold_retries)
    except PlanningConflictError as exc:
        log.info("%s; planning again", exc)
        return None


async def _plan(
    store: Store, job_id: str, limits: Callable[[str], ShardLimits], wire_id: Callable[[str], WireIdFn],
    hold_retries: bool,
) -> PlannedShard | Held | None:
    async with store.planning(job_id) as session:
        shard: PlannedShard | None = None
        bound = ShardLimits(max_requests=PLAN_PAGE, max_bytes=0)
        make_id: WireIdFn | None = None
        while True:
            room = PLAN_PAGE if shard is None else min(PLAN_PAGE, bound.max_requests - shard.request_count)
            if room <= 0:
                break
            rows = await session.pending(room)
            if not rows:
                break
            if shard is None:
                first = rows[0]
                bound, make_id = limits(first.route), wire_id(first.route)
                if hold_retries and len(rows) < min(room, bound.max_requests) and all(r.attempts for r in rows):
                    return HELD
                shard = PlannedShard(route=first.route, endpoint=first.url, model=first.model, request_count=0,
                                     bytes=0)
                await session.add_shard(shard)
            assert make_id is not None
            members: list[tuple[int, str, int]] = []  # (rid, wire_id, attempt in this shard)
            full = False
            for row in rows:
                if shard.request_count and (
                    (row.route, row.url, row.model) != (shard.route, shard.endpoint, shard.model)
                    or shard.bytes + row.size > bound.max_bytes
                    or shard.request_count >= bound.max_requests
                ):
                    full = True
                    break
                shard.request_count += 1
                shard.bytes += row.size
                shard.attempt = max(shard.attempt, row.attempts + 1)
                members.append((row.rid, make_id(row.custom_id, row.rid, shard.token), row.attempts + 1))
            await session.add_members(shard, members)
            if full or len(rows) < room:
                break
        return shard
