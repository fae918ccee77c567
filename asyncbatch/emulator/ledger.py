"""What the emulator saw and did, for tests that prove a client lost nothing and paid for nothing twice.

The ledger is append-mostly, in memory, JSON-serialisable (``GET /_emulator/ledger``) and thread-safe:
request lines are recorded from worker threads and read from test code running in another thread.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

import msgspec

from ..model import Outcome


class FileRecord(msgspec.Struct, kw_only=True):
    """One file the emulator stored: uploaded by a client, or written as a batch's output/error file."""

    id: str
    filename: str
    purpose: str
    bytes: int
    lines: int
    created_at: float


class BatchRecord(msgspec.Struct, kw_only=True):
    """One batch as created. ``status`` follows the batch (provider's own word) until it is final."""

    id: str
    provider: str
    ordinal: int  # 1-based creation order over both providers (what ``expire_batches`` counts)
    created_at: float
    endpoint: str
    metadata: dict[str, str] | None
    request_count: int
    status: str


class RequestRecord(msgspec.Struct, kw_only=True, gc=False):
    """One request line the emulator processed (ran, expired or cancelled) in one batch.

    ``identity`` is what submissions are counted by: the custom_id for OpenAI, a stable hash of the params
    for Anthropic (see ``outcomes.anthropic_identity``). Only successes are billed. Not tracked by the garbage
    collector (it holds no containers): a ledger of a million records would make every collection walk them.
    """

    provider: str
    batch_id: str
    custom_id: str
    identity: str
    submission: int
    outcome: Outcome
    status_code: int | None
    billed: bool


class FaultRecord(msgspec.Struct, kw_only=True):
    """One injected fault: which group, what kind (429, 500, 503, drop, truncate, drop_after_create)."""

    group: str
    kind: str
    method: str
    path: str
    at: float


class LedgerTotals(msgspec.Struct, kw_only=True):
    files: int
    batches: int
    requests: int
    billed: int
    outcomes: dict[str, int]
    faults: dict[str, int]


class LedgerSnapshot(msgspec.Struct, kw_only=True):
    """The whole ledger at one instant (what ``GET /_emulator/ledger`` returns)."""

    files: list[FileRecord]
    batches: list[BatchRecord]
    requests: list[RequestRecord]
    faults: list[FaultRecord]
    totals: LedgerTotals
    calls: dict[str, int] = msgspec.field(default_factory=dict)


class Ledger:
    """Records of files, batches, request lines and injected faults, with the helpers tests need."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: list[FileRecord] = []
        self._batches: dict[str, BatchRecord] = {}
        self._requests: list[RequestRecord] = []
        self._faults: list[FaultRecord] = []
        self._submissions: Counter[str] = Counter()
        self._calls: Counter[str] = Counter()

    def __repr__(self) -> str:
        totals = self.totals()
        return f"Ledger(files={totals.files}, batches={totals.batches}, requests={totals.requests})"

    # --- recording (emulator side) -----------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._lock:
            self._files.append(record)

    def add_batch(self, record: BatchRecord) -> None:
        with self._lock:
            self._batches[record.id] = record

    def update_batch(self, batch_id: str, *, status: str, request_count: int | None = None) -> None:
        with self._lock:
            record = self._batches[batch_id]
            record.status = status
            if request_count is not None:
                record.request_count = request_count

    def next_submissions(self, identities: Iterable[str]) -> list[int]:
        """Count one more submission of each identity and return their 1-based numbers, in order (an
        identity given twice counts twice)."""
        with self._lock:
            counts = self._submissions
            numbers = []
            for identity in identities:
                number = counts[identity] = counts[identity] + 1
                numbers.append(number)
            return numbers

    def add_requests(self, records: Iterable[RequestRecord]) -> None:
        with self._lock:
            self._requests.extend(records)

    def add_fault(self, record: FaultRecord) -> None:
        with self._lock:
            self._faults.append(record)

    def add_call(self, route: str) -> None:
        with self._lock:
            self._calls[route] += 1

    # --- reading (test side) -----------------------------------------------------------------------------

    @property
    def files(self) -> list[FileRecord]:
        with self._lock:
            return list(self._files)

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def faults(self) -> list[FaultRecord]:
        with self._lock:
            return list(self._faults)

    @property
    def calls(self) -> dict[str, int]:
        """Calls of each API route, as ``"GET /v1/batches/{batch_id}"``: how often a client polled, listed..."""
        with self._lock:
            return dict(self._calls)

    def batches_created(self, provider: str | None = None) -> list[BatchRecord]:
        """Every batch created, oldest first (optionally for one provider)."""
        with self._lock:
            return [b for b in self._batches.values() if provider is None or b.provider == provider]

    def batch(self, batch_id: str) -> BatchRecord:
        with self._lock:
            return self._batches[batch_id]

    def requests_for(self, key: str) -> list[RequestRecord]:
        """Records whose custom_id or identity is ``key``, in processing order."""
        with self._lock:
            return [r for r in self._requests if key in (r.custom_id, r.identity)]

    def submissions(self, key: str) -> int:
        """How many times a request line with this custom_id (or identity) was processed."""
        return len(self.requests_for(key))

    def billed_count(self, key: str) -> int:
        """How many times a request with this custom_id (or identity) was billed (succeeded)."""
        return sum(1 for r in self.requests_for(key) if r.billed)

    def totals(self) -> LedgerTotals:
        with self._lock:
            return LedgerTotals(
                files=len(self._files),
                batches=len(self._batches),
                requests=len(self._requests),
                billed=sum(1 for r in self._requests if r.billed),
                outcomes=dict(Counter(str(r.outcome) for r in self._requests)),
                faults=dict(Counter(f.kind for f in self._faults)),
            )

    def snapshot(self) -> LedgerSnapshot:
        totals = self.totals()
        with self._lock:
            return LedgerSnapshot(
                files=list(self._files),
                batches=list(self._batches.values()),
                requests=list(self._requests),
                faults=list(self._faults),
                totals=totals,
                calls=dict(self._calls),
            )

    def to_json(self) -> bytes:
        return msgspec.json.encode(self.snapshot())
