"""Live progress of jobs for people: a terminal block redrawn in place, a cell updated in Jupyter, or nothing.

Progress is read from the store, never from the engine's memory, so the same display serves ``asyncbatch
run`` (the job runs here), ``asyncbatch watch`` (it runs in another process) and a notebook whose kernel
was restarted. When output is not a terminal or a notebook (a log file, CI), ``auto_display`` returns None
and callers stay quiet.
"""

from __future__ import annotations

import html as html_text
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

import anyio
import msgspec

from .model import Job, RequestCounts, Shard
from .store import Store

_RATE_WINDOW = 120.0  # seconds of history behind the ETA: recent enough to follow the provider's pace


class JobProgress(msgspec.Struct, kw_only=True):
    """One job at one instant: request counts, provider batches by status, highest attempt, ETA."""

    job_id: str
    status: str
    counts: RequestCounts
    batches: dict[str, int]
    attempt: int
    eta: float | None = None  # seconds; None until something has finished

    @property
    def done(self) -> int:
        c = self.counts
        return c.completed + c.failed + c.cancelled

    def line(self, bar: int = 24) -> str:
        """One line of text: a ``bar`` characters wide bar (0: none), done / total, outcomes, what is still
        moving, provider batches by status, attempt, ETA."""
        c = self.counts
        filled = round(bar * self.done / c.total) if c.total else bar
        drawn = f" [{'#' * filled}{'.' * (bar - filled)}]" if bar else ""
        batches = ", ".join(f"{n} {status}" for status, n in sorted(self.batches.items())) or "none yet"
        parts = [
            f"{self.job_id} {self.status:<9}{drawn} {self.done}/{c.total}",
            f"{c.completed} ok, {c.failed} failed" + (f", {c.cancelled} cancelled" if c.cancelled else ""),
            f"{c.in_flight} in flight, {c.pending} waiting",
            f"batches: {batches}",
            f"attempt {self.attempt}",
        ]
        if self.eta is not None:
            parts.append(f"ETA {_duration(self.eta)}")
        return " | ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressTracker:
    """Turns successive (job, shards) snapshots into ``JobProgress``, estimating the ETA from the recent rate."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def update(self, job: Job, shards: Sequence[Shard]) -> JobProgress:
        batches = Counter(s.batch_status.value if s.batch_status else s.phase.value for s in shards)
        status = "cancelling" if job.cancel_requested and not job.status.is_terminal else job.status.value
        progress = JobProgress(job_id=job.id, status=status, counts=job.counts, batches=dict(batches),
                               attempt=max((s.attempt for s in shards), default=0))
        now = self._clock()
        samples = self._samples.setdefault(job.id, deque())
        samples.append((now, progress.done))
        while len(samples) > 2 and now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()
        (t0, done0), (t1, done1) = samples[0], samples[-1]
        remaining = job.counts.total - progress.done
        if job.status.is_terminal or remaining == 0:
            progress.eta = 0.0
        elif done1 > done0 and t1 > t0:
            progress.eta = remaining / ((done1 - done0) / (t1 - t0))
        return progress


class Display(Protocol):
    def show(self, jobs: Sequence[JobProgress]) -> None: ...
    def close(self) -> None: ...


class TerminalDisplay:
    """Redraws a block of lines in place with ANSI cursor moves (one line per job)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._drawn = 0

    def show(self, jobs: Sequence[JobProgress]) -> None:
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{job.line()}\n" for job in jobs) + "\x1b[J")
        self.stream.flush()
        self._drawn = len(jobs)

    def close(self) -> None:
        self._drawn = 0


class NotebookDisplay:
    """One output area in a Jupyter cell, updated in place (IPython's ``display(..., display_id=True)``)."""

    def __init__(self, display: Callable[..., Any] | None = None, html: Callable[[str], Any] | None = None) -> None:
        """``display`` and ``html`` default to IPython's ``display`` and ``HTML``."""
        if display is None or html is None:
            from IPython import display as ipython  # type: ignore[import-not-found,unused-ignore]

            display, html = display or ipython.display, html or ipython.HTML
        self._display: Callable[..., Any] = display
        self._html: Callable[[str], Any] = html
        self._handle: Any = None

    def render(self, jobs: Sequence[JobProgress]) -> str:
        rows = "".join(
            f"<div><progress value='{job.done}' max='{max(job.counts.total, 1)}' style='width:12em'></progress> "
            f"<code>{html_text.escape(job.line(bar=0))}</code></div>"
            for job in jobs
        )
        return f"<div class='asyncbatch-progress'>{rows}</div>"

    def show(self, jobs: Sequence[JobProgress]) -> None:
        content = self._html(self.render(jobs))
        if self._handle is None:
            self._handle = self._display(content, display_id=True)
        else:
            self._handle.update(content)

    def close(self) -> None:
        self._handle = None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython imported and its shell is the ZMQ one)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def auto_display(stream: TextIO | None = None) -> Display | None:
    """The display that fits where output goes: Jupyter, a terminal, or None (not a TTY: stay quiet)."""
    if in_notebook():
        return NotebookDisplay()
    stream = stream if stream is not None else sys.stderr
    return TerminalDisplay(stream) if stream.isatty() else None


async def follow(
    store: Store,
    job_ids: Sequence[str],
    display: Display,
    *,
    interval: float = 0.5,
    stop: anyio.Event | None = None,
) -> list[JobProgress]:
    """Show the jobs' progress every ``interval`` seconds until they all end (or ``stop`` is set).

    Returns the last snapshot; the display is drawn once more at the end so it shows the final state.
    """
    tracker = ProgressTracker()
    while True:
        jobs = [tracker.update(job, await store.job_shards(job.id))
                for job in [await store.get_job(job_id) for job_id in job_ids]]
        display.show(jobs)
        if all(job.status in ("done", "cancelled") for job in jobs) or (stop is not None and stop.is_set()):
            display.close()
            return jobs
        with anyio.move_on_after(interval):
            if stop is not None:
                await stop.wait()
            else:
                await anyio.sleep_forever()
