"""Run a Python script with every statement of asyncbatch's SQLite thread timed: wall and thread CPU per SQL.

    .venv/bin/python benchmarks/sqltime.py benchmarks/contenders/asyncbatch_api.py --base-url URL/v1 \
        --input F --workdir W

aiosqlite runs each call in its own thread; this wraps the calls to report, at exit on stderr, the 25 most
expensive statements (by wall time), how often each ran, and the CPU that thread spent on them (wall much
above CPU means waiting: for the GIL, for the disk).
"""

from __future__ import annotations

import atexit
import runpy
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiosqlite.core

_stats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # calls, wall, thread CPU
_execute = aiosqlite.core.Connection._execute


async def _timed_execute(self: aiosqlite.core.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    key = " ".join(str(args[0]).split())[:100] if args and isinstance(args[0], str) else fn.__name__

    def timed() -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = _stats[key]
            entry[0] += 1
            entry[1] += time.perf_counter() - wall
            entry[2] += time.thread_time() - cpu

    return await _execute(self, timed)


@atexit.register
def _report() -> None:
    print("--- SQL in the aiosqlite thread: wall s, CPU s, calls, statement", file=sys.stderr)
    for key, (calls, wall, cpu) in sorted(_stats.items(), key=lambda kv: -kv[1][1])[:25]:
        print(f"{wall:7.3f} {cpu:7.3f} {int(calls):6d}  {key}", file=sys.stderr)


if __name__ == "__main__":
    aiosqlite.core.Connection._execute = _timed_execute  # type: ignore[method-assign]
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
