"""Named fault points, so crash-safety and disk-fault tests can strike the process at an exact step.

``ASYNCBATCH_FAILPOINTS="after_create:2,mid_ingest,spool_write:1:enospc"`` makes the process SIGKILL itself
the 2nd time it passes ``after_create`` (the 1st time for ``mid_ingest``), and makes every spool write from
the 1st on fail with ENOSPC, as on a full disk. The format is ``name[:nth[:action]]``, the action ``kill``
(the default), ``enospc``, or ``stop`` (SIGSTOP: frozen, as a suspended VM, until someone sends SIGCONT).
Unset, a failpoint is one dict lookup. The points sit where a fault is most
dangerous: between a remote effect and the commit that records it, or halfway through a local file.
"""

from __future__ import annotations

import errno
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
    "spool_write",  # a chunk of a shard's input file about to be written
)
ACTIONS = ("kill", "enospc", "stop")


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    points: dict[str, tuple[int, str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition(":")
        nth, _, action = rest.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        if action and action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} for {name}; known: {', '.join(ACTIONS)}")
        points[name] = (int(nth or 1), action or "kill")
    return points


_armed = _parse(os.environ.get(ENV, ""))
_passed: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Strike here if this point is armed and its turn has come: die (SIGKILL, no cleanup, like a power
    cut), raise ``OSError(ENOSPC)`` (this passage and every later one, like a disk that stays full), or
    freeze (SIGSTOP, this passage only) and carry on once continued."""
    armed = _armed.get(name)
    if armed is None:
        return
    nth, action = armed
    _passed[name] += 1
    if _passed[name] < nth:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "stop":
        if _passed[name] == nth:
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)
