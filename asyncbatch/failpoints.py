"""Named crash points, so crash-safety tests can kill the process at an exact step.

``ASYNCBATCH_FAILPOINTS="after_create:2,mid_ingest"`` makes the process SIGKILL itself the 2nd time it
passes ``after_create`` (the 1st time for ``mid_ingest``). Unset, a failpoint is one dict lookup. The
points sit where a crash is most dangerous: between a remote effect and the commit that records it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "ASYNCBATCH_FAILPOINTS"

POINTS = (
    "after_upload",  # file uploaded, file id not yet recorded
    "before_create",  # shard committed in `creating`, create not yet sent
    "after_create",  # batch created at the provider, batch id not yet recorded
    "during_poll",  # a poll recorded
    "mid_ingest",  # some results committed, not all
    "before_finish",  # all results read, shard not yet marked ingested
    "after_resubmit_plan",  # failed requests planned into a new shard, nothing sent yet
)


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        points[name] = int(nth or 1)
    return points


_armed = _parse(os.environ.get(ENV, ""))
_passed: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup, like a power cut) if this point is armed and its turn has come."""
    nth = _armed.get(name)
    if nth is None:
        return
    _passed[name] += 1
    if _passed[name] >= nth:
        os.kill(os.getpid(), signal.SIGKILL)
