"""Every Python example of README.md, run in order, each in a fresh process (a notebook restart between the
two notebook cells), against the emulator, in one scratch directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from asyncbatch.emulator import EmulatorConfig, EmulatorThread
from tests.helpers import API_KEY

README = Path(__file__).parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.M | re.S)


def test_the_readme_examples_run(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 6
    outputs: list[str] = []
    with EmulatorThread(EmulatorConfig(), data_dir=tmp_path / "emulator") as emu:
        env = {**os.environ, "OPENAI_BASE_URL": emu.openai_base_url, "OPENAI_API_KEY": API_KEY,
               "ANTHROPIC_BASE_URL": emu.anthropic_base_url, "ANTHROPIC_API_KEY": API_KEY,
               "ASYNCBATCH_DB": str(tmp_path / "helpers" / "jobs.db"),
               "PYTHONPATH": str(README.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for number, block in enumerate(blocks, 1):
            done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, f"README example {number} failed:\n{block}\n{done.stderr}"
            outputs.append(done.stdout)
    service, worker, cell1, cell2, helpers = outputs[1:6]
    assert "done: 21 of 21" in service and "e0 True" in service
    assert "21 answers stored" in worker
    assert cell1.split()[1] in ("in_progress", "finalizing", "completed")  # returned once the batch was created
    assert "10 results in results.jsonl" in cell2 and "saved $" in cell2
    assert helpers.startswith("completed 21 21 0")
