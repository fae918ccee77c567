"""Helpers shared by the tests: request lines and JSONL files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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


def verify_exactly_once(db: Path, ledger: Any, job_id: str, *, expect_all_succeeded: bool = False) -> dict[str, int]:
    """Prove from the store and the emulator's ledger that nothing was lost and nothing paid twice.

    Every custom_id of the job has exactly one final state; a succeeded one was billed exactly once and
    never processed again after its success; a failed one was never billed; no shard token produced two
    provider batches; the database passes ``PRAGMA integrity_check``. Returns the final state counts.
    """
    import sqlite3
    from collections import Counter, defaultdict

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = dict(conn.execute("SELECT custom_id, state FROM requests WHERE job_id = ?", (job_id,)).fetchall())
        wire = defaultdict(set)
        for custom_id, wire_id in conn.execute(
            "SELECT r.custom_id, m.wire_id FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE r.job_id = ?",
            (job_id,),
        ):
            wire[custom_id].add(wire_id)
        tokens = [t for (t,) in conn.execute("SELECT token FROM shards WHERE job_id = ?", (job_id,))]
    assert states, "the job has no requests"
    unfinished = {cid: s for cid, s in states.items() if s not in ("succeeded", "failed", "cancelled")}
    assert not unfinished, f"{len(unfinished)} requests not final, e.g. {list(unfinished.items())[:3]}"
    by_wire: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for order, record in enumerate(ledger.requests):
        by_wire[record.custom_id].append((order, record))
    for custom_id, state in states.items():
        records = [r for _, r in sorted(x for w in wire[custom_id] for x in by_wire.get(w, []))]
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
