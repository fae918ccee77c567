"""`asyncbatch demo` (what `make demo` runs): the tour ends well and tells what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_tells_the_story_and_the_cost(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "asyncbatch", "demo", "--requests", "200", "--dir",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=120, check=True)
    out = done.stdout
    assert "created: " in out and "ended expired" in out and "requests resubmitted in a new batch" in out
    assert "200 total, 199 succeeded, 1 failed" in out and "results (200 lines" in out
    assert "saved $" in out and "UNPRICED" not in out
    assert (tmp_path / "demo" / "results.jsonl").read_text().count("\n") == 200
    assert done.stderr == ""  # not a terminal: no progress drawn
