"""Submit: ``asyncbatch submit`` of a large file, and the validation of its lines alone.

    .venv/bin/python benchmarks/submit.py --n 50000 --rounds 5

Per input kind: the median wall time, CPU time and peak RSS of ``asyncbatch submit`` into a fresh store (its
own process, nothing sent: submit only validates and stores), and the median over ``--rounds`` of the time
``Validator.from_line`` takes per line in this process (the lines already in memory: reading and storing
excluded), which is the part the checks of each request cost. Kinds: ``openai`` (compact lines),
``openai-dumps`` (as Python's ``json.dumps`` writes them: spaces after ``:`` and ``,``, non-ASCII text as
``\\u`` escapes), ``anthropic`` (native ``{custom_id, params}`` lines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from harness import PYTHON, WORK, Measured, input_file, run_child, save, table

ASYNCBATCH = str(Path(PYTHON).parent / "asyncbatch")
BASE_URLS = {"openai": "http://127.0.0.1:9/v1", "anthropic": "http://127.0.0.1:9"}  # never reached


def dumps_file(n: int) -> Path:
    """``openai-dumps``: the ``openai`` requests as ``json.dumps`` writes them, with some non-ASCII text."""
    path = WORK / "inputs" / f"openai-dumps-{n}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for i in range(n):
                out.write(json.dumps({
                    "custom_id": f"req-{i:07d}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": f"Say héllo to number {i}"}]},
                }) + "\n")
    return path


def source(kind: str, n: int) -> Path:
    return dumps_file(n) if kind == "openai-dumps" else input_file(kind, n)


def submit_once(kind: str, n: int) -> Measured:
    db = WORK / "submit" / f"{kind}.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f"{kind}.db*"):
        stale.unlink()
    provider = "anthropic" if kind == "anthropic" else "openai"
    return run_child([ASYNCBATCH, "submit", "--db", str(db), "--provider", provider,
                      "--base-url", BASE_URLS[provider], str(source(kind, n))])


def validate_per_line(kind: str, n: int) -> float:
    """Microseconds per line of ``Validator.from_line`` (in this process, lines in memory)."""
    from asyncbatch.providers import create_provider
    from asyncbatch.validation import Validator

    provider = create_provider("anthropic" if kind == "anthropic" else "openai", api_key="unused")
    validator = Validator(provider, None)
    lines = source(kind, n).read_bytes().splitlines()
    started = time.perf_counter()
    for number, line in enumerate(lines, start=1):
        validator.from_line(number, line)
    return (time.perf_counter() - started) / len(lines) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kinds", nargs="*", default=["openai", "openai-dumps", "anthropic"])
    args = parser.parse_args()
    runs: dict[str, list[Measured]] = {kind: [] for kind in args.kinds}
    per_line: dict[str, list[float]] = {kind: [] for kind in args.kinds}
    for kind in args.kinds:
        submit_once(kind, args.n)  # warm-up: inputs written, bytecode cached
    for _ in range(args.rounds):
        for kind in args.kinds:  # alternating, so a busy moment of the machine touches every kind alike
            runs[kind].append(submit_once(kind, args.n))
            per_line[kind].append(validate_per_line(kind, args.n))
    rows = [[kind, args.n, statistics.median(r.wall for r in runs[kind]), statistics.median(r.cpu for r in runs[kind]),
             statistics.median(r.peak_rss_mb for r in runs[kind]), statistics.median(per_line[kind])]
            for kind in args.kinds]
    print(table(rows, ["input", "lines", "submit wall s", "submit CPU s", "peak RSS MB", "validation us/line"]))
    print(f"raw figures: {save('submit', {'runs': runs, 'per_line': per_line})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
