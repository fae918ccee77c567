"""Running the request lines of one batch, provider-neutral, as streams from and to disk.

A batch's input is a JSONL file (OpenAI's uploaded file, or Anthropic's inline requests spooled at create)
indexed by line offsets. Lines run in a deterministic shuffled order, a prefix at a time as the emulated
clock advances, so request counts move, output order differs from input order, and a cancel or an expiry
cuts the batch at a realistic point: what ran stays in the results, the rest is cancelled or expired.
Runs are blocking and meant for a worker thread (``anyio.to_thread``); one batch runs one step at a time.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import random
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

import anyio
import msgspec

from ..model import Outcome
from .config import EmulatorConfig
from .ledger import Ledger, RequestRecord
from .outcomes import MARKER, SUCCESS, Decision, decide, draws_nothing


class Parsed(Protocol):
    """One decoded input line, as a provider format reads it."""

    @property
    def custom_id(self) -> str: ...

    @property
    def identity(self) -> str: ...


P = TypeVar("P", bound=Parsed)

#: Lines decided at a time (fewer when they reach ``STEP_BYTES``): their ledger records, result lines and the
#: input pages they were read from are let go after each step, so a batch of any size runs in the memory of one.
STEP_LINES = 8192
STEP_BYTES = 4 << 20


class Written(msgspec.Struct, frozen=True):
    """An encoded result line, the sink (file) it goes to, and the tokens it used (billed ones only)."""

    line: bytes
    sink: str
    input_tokens: int = 0
    output_tokens: int = 0


class LineFormat(Protocol[P]):
    """How one provider reads input lines and writes result lines."""

    @property
    def provider(self) -> str: ...

    def parse(self, raw: bytes) -> P: ...

    def check(self, parsed: P) -> Decision | None:
        """The endpoint's own 400 for this request, if a real endpoint would reject it."""

    def ran(self, parsed: P, decision: Decision) -> Written:
        """The result of a request that ran (succeeded, or errored with ``decision.status``)."""

    def not_run(self, parsed: P, outcome: Outcome) -> Written:
        """The result of a request that never ran (expired or cancelled)."""


class Run(Generic[P]):
    """The execution state of one batch: which lines ran, what they produced, where it was written."""

    def __init__(
        self,
        *,
        fmt: LineFormat[P],
        batch_id: str,
        input_path: Path,
        offsets: array[int],
        workdir: Path,
        shuffle_seed: str,
    ) -> None:
        self.fmt = fmt
        self.batch_id = batch_id
        self.input_path = input_path
        self.offsets = offsets
        self.workdir = workdir
        self.order = list(range(len(offsets)))
        random.Random(shuffle_seed).shuffle(self.order)
        self.done = 0  # lines of ``order`` that have been decided
        self.deferred: list[tuple[int, int]] = []  # (line index, submission) of requests decided to expire
        self.counts: Counter[Outcome] = Counter()
        self.sink_lines: Counter[str] = Counter()
        self.input_tokens = 0
        self.output_tokens = 0
        self.finished = False

    @property
    def total(self) -> int:
        return len(self.offsets)

    def sink_path(self, sink: str) -> Path:
        return self.workdir / f"{self.batch_id}.{sink}.jsonl"

    def run_until(self, target: int, ledger: Ledger, config: EmulatorConfig) -> None:
        """Decide lines ``order[done:target]``: run them, or defer those that expire."""
        target = min(target, self.total)
        if target <= self.done or self.finished:
            return
        fmt, provider, batch_id = self.fmt, self.fmt.provider, self.batch_id
        plain = draws_nothing(config)
        with _Input(self.input_path, self.offsets) as source, _Sinks(self) as sinks, _gc_paused():
            for indices, raws in source.steps(self.order[self.done:target]):
                parsed = [fmt.parse(raw) for raw in raws]
                submissions = ledger.next_submissions([item.identity for item in parsed])
                records: list[RequestRecord] = []
                for index, raw, item, submission in zip(indices, raws, parsed, submissions, strict=True):
                    invalid = fmt.check(item)
                    if plain and MARKER not in raw:
                        decision = invalid or SUCCESS
                    else:
                        decision = decide(raw, identity=item.identity, submission=submission, config=config,
                                          invalid=invalid)
                    outcome = decision.outcome
                    if outcome is Outcome.EXPIRED:
                        self.deferred.append((index, submission))
                        continue
                    sinks.write(fmt.ran(item, decision))
                    records.append(RequestRecord(
                        provider=provider, batch_id=batch_id, custom_id=item.custom_id, identity=item.identity,
                        submission=submission, outcome=outcome, status_code=decision.status or 200,
                        billed=outcome is Outcome.SUCCEEDED))
                self._recorded(records, sinks, ledger)
        self.done = target

    def finish(self, unrun: Outcome, ledger: Ledger, *, strays: int = 0) -> None:
        """Write every undecided line as ``unrun`` (expired/cancelled) and every deferred one as expired
        (cancelled if the batch was cancelled), then ``strays`` successes for custom_ids that no request of
        the batch had (``EmulatorConfig.stray_results``; not in the ledger: nobody sent them). Idempotent."""
        if self.finished:
            return
        known = dict(self.deferred)  # line index -> its submission, counted when it was decided
        pending = self.order[self.done:] + list(known)
        fmt, provider, batch_id = self.fmt, self.fmt.provider, self.batch_id
        with _Input(self.input_path, self.offsets) as source, _Sinks(self) as sinks, _gc_paused():
            for indices, raws in source.steps(pending):
                parsed = [fmt.parse(raw) for raw in raws]
                fresh = iter(ledger.next_submissions(
                    [item.identity for index, item in zip(indices, parsed, strict=True) if index not in known]))
                records: list[RequestRecord] = []
                for index, item in zip(indices, parsed, strict=True):
                    submission = known[index] if index in known else next(fresh)
                    sinks.write(fmt.not_run(item, unrun))
                    records.append(RequestRecord(
                        provider=provider, batch_id=batch_id, custom_id=item.custom_id, identity=item.identity,
                        submission=submission, outcome=unrun, status_code=None, billed=False))
                self._recorded(records, sinks, ledger)
            if strays and self.total:
                for _, (first,) in source.steps(self.order[:1]):
                    for number in range(strays):
                        line = msgspec.json.decode(first)
                        line["custom_id"] = f"stray-{self.batch_id[-8:]}-{number}"
                        sinks.write(fmt.ran(fmt.parse(msgspec.json.encode(line)), SUCCESS))
        self.done = self.total
        self.finished = True

    def _recorded(self, records: list[RequestRecord], sinks: _Sinks[P], ledger: Ledger) -> None:
        """The end of a step: its result lines appended to their files, its requests to the ledger."""
        sinks.flush()
        self.counts.update(record.outcome for record in records)
        ledger.add_requests(records)


class Step(msgspec.Struct, frozen=True):
    """Where a running batch stands after ``progress``.

    ``ended``: its deadline (completion or expiry) has passed. ``cut_short``: some requests never ran, so
    an OpenAI batch ends ``expired`` rather than ``completed``.
    """

    deadline: float
    ended: bool
    cut_short: bool


async def progress(
    run: Run[P], *, ordinal: int, start: float, created_at: float, expires_at: float, now: float,
    ledger: Ledger, config: EmulatorConfig,
) -> Step:
    """Run the requests due by ``now`` (in a worker thread).

    Requests finish evenly from ``start`` to ``created_at + complete_after``; the completion window
    (``expires_at``) or ``expire_batches`` (only ``expire_done_fraction`` of them run) cut that short.
    """
    end = max(created_at + config.complete_after, start)
    deadline = min(end, expires_at)
    forced = ordinal in config.expire_batches
    elapsed = min(now, deadline)
    share = 1.0 if elapsed >= end else max(0.0, (elapsed - start) / (end - start))
    target = math.floor(run.total * share * (config.expire_done_fraction if forced else 1.0))
    if target > run.done and not run.finished:  # else nothing is due: no trip to a worker thread
        await anyio.to_thread.run_sync(run.run_until, target, ledger, config)
    return Step(deadline=deadline, ended=now >= deadline, cut_short=forced or end > expires_at or bool(run.deferred))


class _Input:
    """A batch's input lines, read by index (a positioned read each: no seek and buffered readline), a step
    at a time (``STEP_LINES`` lines, ``STEP_BYTES`` bytes).

    A line runs to where the next one starts: it may end with its newline and blank lines, which JSON reads as
    white space. (A memory map was tried: reading is cheaper, but the system maps whole folios, up to MiBs,
    around each page read, and a batch of 200 MB held it all.)
    """

    def __init__(self, path: Path, offsets: array[int]) -> None:
        self._path = path
        self._offsets = offsets
        self._handle: BinaryIO | None = None

    def __enter__(self) -> _Input:
        self._handle = open(self._path, "rb", buffering=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()

    def steps(self, indices: list[int]) -> Iterator[tuple[list[int], list[bytes]]]:
        """(indices, their lines) a step at a time, in the order of ``indices``."""
        assert self._handle is not None
        offsets, last = self._offsets, len(self._offsets) - 1
        size = os.fstat(self._handle.fileno()).st_size
        read = _read_at(self._handle)
        at = 0
        while at < len(indices):
            lines: list[bytes] = []
            taken = 0
            for index in indices[at:at + STEP_LINES]:
                start = offsets[index]
                line = read((offsets[index + 1] if index < last else size) - start, start)
                lines.append(line)
                taken += len(line)
                if taken >= STEP_BYTES:
                    break
            yield indices[at:at + len(lines)], lines
            at += len(lines)


def _read_at(handle: BinaryIO) -> Callable[[int, int], bytes]:
    """``read(size, offset)`` on ``handle``: one system call where the platform has ``pread``."""
    pread = getattr(os, "pread", None)
    if pread is not None:
        return functools.partial(pread, handle.fileno())

    def read(size: int, offset: int) -> bytes:
        handle.seek(offset)
        return handle.read(size)

    return read


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No garbage collection during a run's steps: each request makes a few short-lived dicts and lists, and
    the collections they set off were a third of the emulator's time per request. Nothing here makes cycles
    (everything is freed by reference counting); a collector disabled by the application stays disabled."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Sinks(Generic[P]):
    """Result files of one run: lines are gathered per sink and appended one step at a time."""

    def __init__(self, run: Run[P]) -> None:
        self._run = run
        self._pending: dict[str, list[bytes]] = {}

    def __enter__(self) -> _Sinks[P]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def write(self, written: Written) -> None:
        lines = self._pending.get(written.sink)
        if lines is None:
            lines = self._pending[written.sink] = []
        lines.append(written.line)
        run = self._run
        run.input_tokens += written.input_tokens
        run.output_tokens += written.output_tokens

    def flush(self) -> None:
        for sink, lines in self._pending.items():
            if lines:
                with open(self._run.sink_path(sink), "ab") as handle:
                    handle.write(b"\n".join(lines))
                    handle.write(b"\n")
                self._run.sink_lines[sink] += len(lines)
                lines.clear()
