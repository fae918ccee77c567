"""Running the request lines of one batch, provider-neutral, as streams from and to disk.

A batch's input is a JSONL file (OpenAI's uploaded file, or Anthropic's inline requests spooled at create)
indexed by line offsets. Lines run in a deterministic shuffled order, a prefix at a time as the emulated
clock advances, so request counts move, output order differs from input order, and a cancel or an expiry
cuts the batch at a realistic point: what ran stays in the results, the rest is cancelled or expired.
Runs are blocking and meant for a worker thread (``anyio.to_thread``); one batch runs one step at a time.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

import anyio
import msgspec

from ..model import Outcome
from .config import EmulatorConfig
from .ledger import Ledger, RequestRecord
from .outcomes import SUCCESS, Decision, decide


class Parsed(Protocol):
    """One decoded input line, as a provider format reads it."""

    @property
    def custom_id(self) -> str: ...

    @property
    def identity(self) -> str: ...


P = TypeVar("P", bound=Parsed)


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
        records: list[RequestRecord] = []
        with open(self.input_path, "rb") as source, _Sinks(self) as sinks:
            for index in self.order[self.done:target]:
                raw = self._line(source, index)
                parsed = self.fmt.parse(raw)
                submission = ledger.next_submission(parsed.identity)
                decision = decide(raw, identity=parsed.identity, submission=submission, config=config,
                                  invalid=self.fmt.check(parsed))
                if decision.outcome is Outcome.EXPIRED:
                    self.deferred.append((index, submission))
                    continue
                written = self.fmt.ran(parsed, decision)
                sinks.write(written)
                records.append(self._record(parsed, submission, decision.outcome, decision.status or 200))
        self.done = target
        ledger.add_requests(records)

    def finish(self, unrun: Outcome, ledger: Ledger, *, strays: int = 0) -> None:
        """Write every undecided line as ``unrun`` (expired/cancelled) and every deferred one as expired
        (cancelled if the batch was cancelled), then ``strays`` successes for custom_ids that no request of
        the batch had (``EmulatorConfig.stray_results``; not in the ledger: nobody sent them). Idempotent."""
        if self.finished:
            return
        pending = [(i, None) for i in self.order[self.done:]] + list(self.deferred)
        records: list[RequestRecord] = []
        with open(self.input_path, "rb") as source, _Sinks(self) as sinks:
            for index, known in pending:
                parsed = self.fmt.parse(self._line(source, index))
                submission = known if known is not None else ledger.next_submission(parsed.identity)
                sinks.write(self.fmt.not_run(parsed, unrun))
                records.append(self._record(parsed, submission, unrun, None))
            for number in range(strays if self.total else 0):
                line = msgspec.json.decode(self._line(source, self.order[0]))
                line["custom_id"] = f"stray-{self.batch_id[-8:]}-{number}"
                sinks.write(self.fmt.ran(self.fmt.parse(msgspec.json.encode(line)), SUCCESS))
        self.done = self.total
        self.finished = True
        ledger.add_requests(records)

    def _line(self, source: BinaryIO, index: int) -> bytes:
        source.seek(self.offsets[index])
        return source.readline()

    def _record(self, parsed: P, submission: int, outcome: Outcome, status: int | None) -> RequestRecord:
        self.counts[outcome] += 1
        return RequestRecord(
            provider=self.fmt.provider,
            batch_id=self.batch_id,
            custom_id=parsed.custom_id,
            identity=parsed.identity,
            submission=submission,
            outcome=outcome,
            status_code=status,
            billed=outcome is Outcome.SUCCEEDED,
        )


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
    await anyio.to_thread.run_sync(run.run_until, target, ledger, config)
    return Step(deadline=deadline, ended=now >= deadline, cut_short=forced or end > expires_at or bool(run.deferred))


class _Sinks(Generic[P]):
    """Result files of one run, opened for append on first use and closed together."""

    def __init__(self, run: Run[P]) -> None:
        self._run = run
        self._files: dict[str, BinaryIO] = {}

    def __enter__(self) -> _Sinks[P]:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._files.values():
            handle.close()

    def write(self, written: Written) -> None:
        handle = self._files.get(written.sink)
        if handle is None:
            handle = self._files[written.sink] = open(self._run.sink_path(written.sink), "ab")  # noqa: SIM115
        handle.write(written.line)
        handle.write(b"\n")
        self._run.sink_lines[written.sink] += 1
        self._run.input_tokens += written.input_tokens
        self._run.output_tokens += written.output_tokens
