"""What the plain peer scripts share: their command line, the input split at the API's per-batch limit,
parsing OpenAI output files, and the summary line the harness reads. Kept tiny: it is part of their time."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

MAX_LINES = 50_000  # OpenAI's requests per batch
TERMINAL = ("completed", "failed", "expired", "cancelled")  # OpenAI batch statuses that end a poll


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--workdir", required=True)
    return parser.parse_args()


def split(path: Path, workdir: Path) -> list[Path]:
    """The input as files of at most ``MAX_LINES`` lines, as one would write them by hand."""
    parts: list[Path] = []
    with path.open("rb") as source:
        lines = source.readlines()
    for start in range(0, len(lines), MAX_LINES):
        part = workdir / f"part-{len(parts)}.jsonl"
        part.write_bytes(b"".join(lines[start : start + MAX_LINES]))
        parts.append(part)
    return parts


def parse_output(text: str, results: dict[str, dict[str, Any]]) -> None:
    """Every line of an OpenAI output or error file into ``results``, by custom_id."""
    for line in text.splitlines():
        if line.strip():
            item = json.loads(line)
            results[item["custom_id"]] = item


def succeeded(results: dict[str, dict[str, Any]]) -> int:
    return sum(1 for r in results.values() if (r.get("response") or {}).get("status_code") == 200)


def report(ok: int, started: float) -> None:
    print(json.dumps({"ok": ok, "inner": time.perf_counter() - started}))
