"""Live progress of jobs for people, drawn with rich: a terminal block redrawn in place, a cell updated in
Jupyter, or nothing.

Progress is read from the store, never from the engine's memory, so the same display serves ``asyncbatch
run`` (the job runs here), ``asyncbatch watch`` (it runs in another process) and a notebook whose kernel
was restarted; the ETA is computed from the store too (:func:`estimate_eta`), so every viewer shows the same
one at the same moment. Each job is one line cut to the width (a wrapped line leaves a copy behind at every
redraw). When output is neither a terminal nor a notebook (a log file, CI), ``auto_display`` returns None
and callers stay quiet.
"""

from __future__ import annotations

import io
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

import anyio
import msgspec
from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from .model import Job, RequestCounts, Shard
from .store import Store

BAR_WIDTH = 24
NOTEBOOK_WIDTH = 120  # characters of a notebook line (rich's own Jupyter default is 115)
UNCUT_WIDTH = 1000  # not a terminal: nothing is redrawn, so nothing needs cutting


class JobProgress(msgspec.Struct, kw_only=True):
    """One job at one instant: request counts, provider batches by status, highest attempt, ETA."""

    job_id: str
    status: str
    counts: RequestCounts
    batches: dict[str, int]
    attempt: int
    eta: float | None = None  # seconds; None until something has finished
    waiting: str | None = None  # why a live shard is waiting (rate limited, unreachable), from the store

    @property
    def done(self) -> int:
        c = self.counts
        return c.completed + c.failed + c.cancelled

    def details(self) -> list[str]:
        """What follows the bar, most telling first (a line cut to the width loses the end): done / total,
        ETA, outcomes, what is still moving, provider batches by status, attempt."""
        c = self.counts
        batches = ", ".join(f"{n} {status}" for status, n in sorted(self.batches.items())) or "none yet"
        parts = [f"{self.done}/{c.total}"]
        if self.waiting:
            parts.append(f"waiting: {self.waiting}")
        if self.eta is not None:
            parts.append(f"ETA {_duration(self.eta)}")
        parts += [
            f"{c.completed} ok, {c.failed} failed" + (f", {c.cancelled} cancelled" if c.cancelled else ""),
            f"{c.in_flight} in flight, {c.pending} waiting",
            f"batches: {batches}",
            f"attempt {self.attempt}",
        ]
        return parts

    def line(self, bar: int = BAR_WIDTH) -> str:
        """The job as one line of plain text, with a ``bar`` characters wide bar of ``#`` (0: none)."""
        filled = round(bar * self.done / self.counts.total) if self.counts.total else bar
        drawn = f" [{'#' * filled}{'.' * (bar - filled)}]" if bar else ""
        return f"{self.job_id} {self.status:<9}{drawn} " + " | ".join(self.details())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def estimate_eta(job: Job, shards: Sequence[Shard], now: float) -> float | None:
    """Seconds until the job ends, from the store alone: requests still to finish at the rate of those
    finished since the first provider batch was created (the job's creation when none was yet).

    Every viewer (``run``, ``watch``, a notebook) computes the same value at the same moment, whenever it
    started watching. None while nothing has finished (batch results come in jumps: no rate to tell yet);
    0 once the job has ended.
    """
    c = job.counts
    done = c.completed + c.failed + c.cancelled
    if job.status.is_terminal or done >= c.total:
        return 0.0
    started = min((s.creating_at for s in shards if s.creating_at is not None), default=job.created_at)
    elapsed = now - started
    if done == 0 or elapsed <= 0:
        return None
    return (c.total - done) * elapsed / done


class ProgressTracker:
    """Turns (job, shards) snapshots from the store into ``JobProgress``; ``clock`` is the wall clock the
    store's timestamps are on."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    def update(self, job: Job, shards: Sequence[Shard]) -> JobProgress:
        batches = Counter(s.batch_status.value if s.batch_status else s.phase.value for s in shards)
        status = "cancelling" if job.cancel_requested and not job.status.is_terminal else job.status.value
        waiting = next((s.last_error for s in shards if s.phase.is_live and s.last_error), None)
        return JobProgress(job_id=job.id, status=status, counts=job.counts, batches=dict(batches),
                           attempt=max((s.attempt for s in shards), default=0),
                           eta=estimate_eta(job, shards, self._clock()), waiting=waiting)


def render(jobs: Sequence[JobProgress], width: int) -> RenderableType:
    """The jobs as rich renders them, one line each of at most ``width`` cells: id and status whole, a bar
    that narrows on small terminals, then the details cut with an ellipsis where the width ends."""
    head = max((len(job.job_id) for job in jobs), default=0) + 10  # the id, a space, the status padded to 9
    bar = max(6, min(BAR_WIDTH, (width - 60) // 3))
    table = Table.grid(
        Column(no_wrap=True, overflow="ellipsis", max_width=max(1, width - 2)),
        Column(no_wrap=True, width=bar),
        Column(no_wrap=True, overflow="ellipsis", max_width=max(1, width - head - bar - 2)),
        padding=(0, 1),
    )
    for job in jobs:
        finished = job.status in ("done", "cancelled")
        table.add_row(
            Text.assemble((job.job_id, "bold"), " ", (f"{job.status:<9}", "green" if finished else "cyan")),
            ProgressBar(total=max(job.counts.total, 1), completed=job.done if job.counts.total else 1, width=bar),
            Text(" | ".join(job.details())),
        )
    return table


class Display(Protocol):
    def show(self, jobs: Sequence[JobProgress]) -> None: ...
    def close(self) -> None: ...


class TerminalDisplay:
    """A block of one line per job redrawn in place on ``stream`` (rich's Live): each redraw measures the
    terminal again, so a resized window gets lines cut to its new width. On a stream that is not a
    terminal only the final state is written, once, when the display closes."""

    def __init__(self, stream: TextIO) -> None:
        from rich.live import Live

        self.stream = stream
        self._console = Console(file=stream, force_jupyter=False, width=None if stream.isatty() else UNCUT_WIDTH)
        self._live = Live(console=self._console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        self._started = False

    def show(self, jobs: Sequence[JobProgress]) -> None:
        if not self._started:
            self._live.start()
            self._started = True
        self._live.update(render(jobs, self._console.width), refresh=True)

    def close(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False


class NotebookDisplay:
    """One output area in a Jupyter cell updated in place (IPython's ``display(..., display_id=True)``),
    holding the same rich rendering as a terminal, as HTML."""

    def __init__(self, display: Callable[..., Any] | None = None, html: Callable[[str], Any] | None = None) -> None:
        """``display`` and ``html`` default to IPython's ``display`` and ``HTML``."""
        if display is None or html is None:
            from IPython import display as ipython  # type: ignore[import-not-found,unused-ignore]

            display, html = display or ipython.display, html or ipython.HTML
        self._display: Callable[..., Any] = display
        self._html: Callable[[str], Any] = html
        self._handle: Any = None

    def render(self, jobs: Sequence[JobProgress]) -> str:
        """The HTML of the jobs' lines (rich's rendering with inline styles, in a ``<pre>``)."""
        console = Console(file=io.StringIO(), record=True, width=NOTEBOOK_WIDTH, force_jupyter=False,
                          force_terminal=True, color_system="truecolor")
        console.print(Group(render(jobs, NOTEBOOK_WIDTH)))
        return console.export_html(
            inline_styles=True,
            code_format="<pre class='asyncbatch-progress' style='white-space:pre;overflow-x:auto;"
                        "line-height:normal;font-family:Menlo,\"DejaVu Sans Mono\",consolas,monospace'>"
                        "{code}</pre>",
        )

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

    Returns the last snapshot; the display is drawn once more at the end so it shows the final state, and
    closed however ``follow`` ends.
    """
    tracker = ProgressTracker()
    try:
        while True:
            jobs = [tracker.update(job, await store.job_shards(job.id))
                    for job in [await store.get_job(job_id) for job_id in job_ids]]
            display.show(jobs)
            if all(job.status in ("done", "cancelled") for job in jobs) or (stop is not None and stop.is_set()):
                return jobs
            with anyio.move_on_after(interval):
                if stop is not None:
                    await stop.wait()
                else:
                    await anyio.sleep_forever()
    finally:  # also when cancelled (Ctrl-C): the terminal gets its cursor back below the last drawing
        display.close()
