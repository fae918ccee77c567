"""What the reliability suite shares: the CLI as a real subprocess, and the ledger-and-store verdict.

The CLI runs with a scrubbed environment (no real provider keys, no failpoints unless asked), so a test
can never reach a real provider and one test's settings never leak into another's process.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from asyncbatch.model import RequestState
from tests.helpers import API_KEY, audit, verify_exactly_once

# Fast polling, small shards and small ingest chunks: many phases (and so many crash windows) per second.
RUN_ARGS = ("--poll-interval", "0.05", "--max-poll-interval", "0.3")


class CliResult(msgspec.Struct):
    code: int
    out: str
    err: str


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "ASYNCBATCH_"))}
    env.update(OPENAI_API_KEY=API_KEY, ANTHROPIC_API_KEY=API_KEY, **extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "asyncbatch", *args]


async def cli(*args: str, env: dict[str, str] | None = None, within: float = 180) -> CliResult:
    with anyio.fail_after(within):
        proc = await anyio.run_process(command(*args), env=env or cli_env(), check=False)
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def spawn(*args: str, env: dict[str, str] | None = None) -> anyio.abc.Process:
    return await anyio.open_process(command(*args), env=env or cli_env())


async def drain(proc: anyio.abc.Process) -> tuple[str, str]:
    """Everything a finished process wrote (its pipes are small enough to hold it)."""
    out = err = b""
    if proc.stdout is not None:
        async for chunk in proc.stdout:
            out += chunk
    if proc.stderr is not None:
        async for chunk in proc.stderr:
            err += chunk
    return out.decode(), err.decode()


async def stop(proc: anyio.abc.Process, signum: signal.Signals = signal.SIGKILL) -> None:
    if proc.returncode is None:
        proc.send_signal(signum)
    await proc.wait()


async def until(predicate: Callable[[], bool], *, within: float = 30) -> None:
    """Wait until ``predicate()`` holds (something another process or the emulator does, with no event)."""
    with anyio.fail_after(within):
        while True:
            if predicate():
                return
            await anyio.sleep(0.01)


def sent_ids_by_batch(emu: Any) -> dict[str, list[str]]:
    """The custom_ids each provider batch was created with, read from the emulator's snapshots of inputs."""
    return {b.id: [line["custom_id"] for line in emu.sent_requests(b.id)] for b in emu.ledger.batches_created()}


def verify_guarantees(db: Path, emu: Any, job_id: str, **options: Any) -> dict[str, int]:
    """``verify_exactly_once``, plus: a succeeded custom_id has exactly one success stored, at its last
    attempt, and no batch was created with a custom_id after the batch it succeeded in.

    ``verify_exactly_once`` sees what the emulator *processed*; a batch that nobody polled processes
    nothing, so here the batches' *inputs* are checked too.
    """
    counts = verify_exactly_once(db, emu.ledger, job_id, **options)
    found = audit(db, job_id)
    # one final result each: a success is stored once, as the request's last attempt
    bad_successes = [
        cid for cid, (state, attempts) in found.requests.items()
        if len(found.successes.get(cid, [])) > 1
        or (state is RequestState.SUCCEEDED) != (len(found.successes.get(cid, [])) == 1)
        or (found.successes.get(cid) and found.successes[cid][0] != attempts)
    ]
    wire_to_cid = {wire: cid for cid, wires in found.wire_ids.items() for wire in wires}
    assert not bad_successes, f"custom_ids without exactly one final success: {bad_successes[:5]}"
    ordinal = {b.id: b.ordinal for b in emu.ledger.batches_created()}
    billed_in: dict[str, int] = {}
    for record in emu.ledger.requests:
        if record.billed and record.custom_id in wire_to_cid:
            billed_in[wire_to_cid[record.custom_id]] = ordinal[record.batch_id]
    sent_after: dict[str, list[int]] = defaultdict(list)
    for batch_id, wire_ids in sent_ids_by_batch(emu).items():
        for wire_id in wire_ids:
            cid = wire_to_cid.get(wire_id)
            if cid in billed_in and ordinal[batch_id] > billed_in[cid]:
                sent_after[cid].append(ordinal[batch_id])
    assert not sent_after, f"sent again after success: {dict(list(sent_after.items())[:3])}"
    return counts


def files_under(*roots: Path) -> Iterable[Path]:
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())
