"""Helpers shared by the tests: request lines, JSONL files, and the verdict on a job read through its store."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

API_KEY = "sk-test-0123456789abcdefSECRET"


async def plan_all(store: Any, job_id: str, limits: Any, wire_id: Any) -> list[Any]:
    """Plan every pending request of a job into shards, as the engine does one shard at a time (the same limits
    and wire ids for every route)."""
    from asyncbatch.engine.planning import plan_shard

    planned = []
    while shard := await plan_shard(store, job_id, lambda route: limits, lambda route: wire_id):
        planned.append(shard)
    return planned


def chat_line(custom_id: str, text: str = "hello", *, model: str = "gpt-5.4-mini", **body: Any) -> dict[str, Any]:
    """One OpenAI batch input line for /v1/chat/completions."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def write_jsonl(path: Path, lines: Iterable[Mapping[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


def in_store(db: str | Path, read: Callable[[Any], Awaitable[T]]) -> T:
    """``read(store)`` on a store of its own, opened in a thread of its own: works from sync and async tests
    alike, on any backend the URL names."""
    import threading

    import anyio

    from asyncbatch.store import open_store

    found: list[T] = []
    failed: list[BaseException] = []

    async def run() -> None:
        store = open_store(str(db))
        await store.open()
        try:
            found.append(await read(store))
        finally:
            await store.close()

    def thread_main() -> None:
        try:
            anyio.run(run)
        except BaseException as exc:  # raised in the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return found[0]


def integrity(db: str | Path) -> str:
    """The store's own integrity check (through the store, whatever the backend)."""
    return in_store(db, lambda store: store.integrity_check())


def audit(db: str | Path, job_id: str) -> Any:
    """``Store.audit`` of a job (see ``in_store``)."""
    return in_store(db, lambda store: store.audit(job_id))


def verify_exactly_once(
    db: str | Path, ledger: Any, job_id: str, *, expect_all_succeeded: bool = False
) -> dict[str, int]:
    """Prove from the store and the emulator's ledger that nothing was lost and nothing paid twice.

    Every custom_id of the job has exactly one final state; a succeeded one was billed exactly once and
    never processed again after its success; a failed one was never billed; no shard token produced two
    provider batches; the store passes its integrity check. Returns the final state counts.
    """
    from collections import Counter, defaultdict

    found = audit(db, job_id)
    assert found.integrity == "ok", found.integrity
    states = {cid: state.value for cid, (state, _) in found.requests.items()}
    wire = {cid: set(ids) for cid, ids in found.wire_ids.items()}
    tokens = found.tokens
    assert states, "the job has no requests"
    unfinished = {cid: s for cid, s in states.items() if s not in ("succeeded", "failed", "cancelled")}
    assert not unfinished, f"{len(unfinished)} requests not final, e.g. {list(unfinished.items())[:3]}"
    by_wire: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for order, record in enumerate(ledger.requests):
        by_wire[record.custom_id].append((order, record))
    for custom_id, state in states.items():
        records = [r for _, r in sorted(x for w in wire.get(custom_id, ()) for x in by_wire.get(w, []))]
        billed = [i for i, r in enumerate(records) if r.billed]
        if state == "succeeded":
            assert len(billed) == 1, f"{custom_id}: billed {len(billed)} times"
            assert billed[0] == len(records) - 1, f"{custom_id}: processed again after it succeeded"
        else:
            assert not billed, f"{custom_id} is {state} but was billed"
    # which shard each provider batch was created for: OpenAI echoes the token in metadata; Anthropic's wire
    # ids start with the token's first 16 characters
    batch_shard: dict[str, str] = {}
    for b in ledger.batches_created():
        if b.metadata and "asyncbatch_token" in b.metadata:
            batch_shard[b.id] = b.metadata["asyncbatch_token"]
    for record in ledger.requests:
        if record.batch_id not in batch_shard and "-" in record.custom_id:
            prefix = record.custom_id.split("-", 1)[0]
            batch_shard[record.batch_id] = next((t for t in tokens if t.startswith(prefix)), prefix)
    doubled = {t: n for t, n in Counter(batch_shard.values()).items() if t in tokens and n > 1}
    assert not doubled, f"shard tokens with more than one provider batch: {doubled}"
    counts = Counter(states.values())
    if expect_all_succeeded:
        assert counts == {"succeeded": len(states)}, counts
    return dict(counts)
