"""`asyncbatch demo` (what `make demo` runs): the tour ends well, tells it in a dozen lines, and ends with
the command line to run next, as it can be run (after `make demo` the CLI is in .venv/bin, not on PATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_demo_tells_a_short_story_and_how_to_run_the_cli(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "asyncbatch", "demo", "--requests", "200", "--dir",
                           str(tmp_path / "demo")], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    lines = done.stdout.splitlines()
    assert len(lines) <= 12, done.stdout
    out = done.stdout
    assert "sent as " in out and "expired 1 batch" in out and "requests resubmitted" in out
    assert "200/200 done" in out and "199 succeeded, 1 failed for good" in out and "results (200 lines" in out
    assert "saved 50%" in out and "UNPRICED" not in out
    assert (tmp_path / "demo" / "results.jsonl").read_text().count("\n") == 200
    assert done.stderr == ""  # not a terminal: no progress drawn

    command = lines[-1].split()
    script = Path(sys.executable).parent / "asyncbatch"
    assert command[0] == (os.path.relpath(script, ROOT) if script.exists() else sys.executable)
    again = subprocess.run([str(ROOT / command[0]) if script.exists() else command[0], *command[1:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and ": done" in again.stdout, again.stderr
