"""The progress display where people see it: a real terminal (tmux) and a real Jupyter kernel (nbclient).

A line longer than the terminal wraps, and every redraw then leaves a copy behind (an 80x24 screen filled in
9 s); in a notebook the display must render and then update in place.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, EmulatorThread, run_emulator
from asyncbatch.progress import NOTEBOOK_WIDTH
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line

ROOT = Path(__file__).parents[2]


def _tmux_binary() -> str:
    """tmux, installed with apt-get when missing; the tests skip only when it cannot be installed."""
    found = shutil.which("tmux")
    if found is None:
        install = ["apt-get", "install", "-y", "tmux"]
        for command in (install, ["apt-get", "update"], install):
            try:
                subprocess.run(command, capture_output=True, timeout=300, check=False)
            except (OSError, subprocess.TimeoutExpired):
                break
            if found := shutil.which("tmux"):
                break
    if found is None:
        pytest.skip("tmux is not installed and could not be installed")
    return found


class Tmux:
    """A private tmux server (its own socket) running one command in a pane of a given size."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.socket = f"asyncbatch-test-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        done = subprocess.run([self.binary, "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout

    def run(self, argv: list[str], *, width: int, height: int = 24, env: dict[str, str]) -> None:
        """Start ``argv`` in a width x height pane; the pane stays after it exits, showing ``EXIT=<code>``."""
        assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        command = f"cd {shlex.quote(str(ROOT))} && env {assignments} {shlex.join(argv)}; echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-x", str(width), "-y", str(height), command)

    def screen(self) -> list[str]:
        """Every line the pane has shown, scrolled-off history included."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", "0").rstrip("\n").split("\n")

    def wait_for(self, text: str, timeout: float = 90) -> list[str]:
        """The pane's lines once one of them holds ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.screen()
            if any(text in line for line in lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never showed:\n" + "\n".join(self.screen()))

    def wait_for_exit(self) -> list[str]:
        return self.wait_for("EXIT=")

    def close(self) -> None:
        subprocess.run([self.binary, "-L", self.socket, "kill-server"], capture_output=True, timeout=30, check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    terminal = Tmux(_tmux_binary())
    try:
        yield terminal
    finally:
        terminal.close()


def cli_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "OPENAI_API_KEY": API_KEY}


async def submit_job(tmp_path: Path, emu: Any, requests: int = 600) -> tuple[Path, str]:
    db = tmp_path / "jobs.db"
    provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
    async with BatchManager(db, provider=provider) as bm:
        job = await bm.submit([chat_line(f"r{i:04d}") for i in range(requests)])
    return db, job.id


def check_screen(lines: list[str], job_id: str, width: int, total: int) -> None:
    """One progress line (and the final summary line) naming the job: no wrapped copies left behind."""
    assert lines[-1] == "EXIT=0", "\n".join(lines)
    naming = [line for line in lines if job_id in line]
    assert len(naming) == 2, "\n".join(lines)
    progress, summary = naming
    assert f"{total}/{total}" in progress and " done " in progress and len(progress) <= width
    assert summary.startswith(f"{job_id} done: {total} succeeded")


@pytest.mark.parametrize("width", [80, 100, 160])
async def test_run_redraws_one_line_per_job_in_a_real_terminal(tmp_path: Path, tmux: Tmux, width: int) -> None:
    async with run_emulator(EmulatorConfig(complete_after=2.5), data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit_job(tmp_path, emu)
        tmux.run([sys.executable, "-m", "asyncbatch", "run", "--db", str(db), "--poll-interval", "0.1",
                  "--max-requests-per-batch", "100"], width=width, env=cli_env())
        lines = await anyio.to_thread.run_sync(tmux.wait_for_exit)
    check_screen(lines, job_id, width, 600)


async def test_watch_redraws_one_line_in_a_real_terminal(tmp_path: Path, tmux: Tmux) -> None:
    async with run_emulator(EmulatorConfig(complete_after=2.5), data_dir=tmp_path / "emu") as emu:
        db, job_id = await submit_job(tmp_path, emu)
        async with await anyio.open_process(
            [sys.executable, "-m", "asyncbatch", "run", "--db", str(db), "--poll-interval", "0.1",
             "--max-requests-per-batch", "100"], env=cli_env()) as runner:
            tmux.run([sys.executable, "-m", "asyncbatch", "watch", job_id, "--db", str(db), "--interval", "0.2"],
                     width=80, env=cli_env())
            lines = await anyio.to_thread.run_sync(tmux.wait_for_exit)
            assert await runner.wait() == 0
    check_screen(lines, job_id, 80, 600)


NOTEBOOK_CELL = """
import anyio
from asyncbatch import BatchManager
from asyncbatch.progress import auto_display, follow
from asyncbatch.providers.openai import OpenAIProvider

provider = OpenAIProvider(api_key={key!r}, base_url={base_url!r})
lines = [{{"custom_id": f"r{{i}}", "method": "POST", "url": "/v1/chat/completions",
          "body": {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "hi"}}]}}}} for i in range(40)]
async with BatchManager({db!r}, provider=provider, poll_interval=0.05, max_poll_interval=0.2,
                        max_requests_per_batch=10) as bm:
    job = await bm.submit(lines)
    display = auto_display()
    print(type(display).__name__)
    async with anyio.create_task_group() as tg:
        tg.start_soon(bm.wait, job.id)
        await follow(bm.store, [job.id], display, interval=0.1)
"""


def test_the_display_renders_and_updates_in_a_real_jupyter_kernel(tmp_path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    messages: list[tuple[str, dict[str, Any]]] = []

    class Recording(NotebookClient):  # type: ignore[misc]
        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            if msg["msg_type"] in ("display_data", "update_display_data"):
                messages.append((msg["msg_type"], dict(msg["content"]["data"])))
            return super().process_message(msg, cell, cell_index)

    with EmulatorThread(EmulatorConfig(complete_after=1.0), data_dir=tmp_path / "emu") as emu:
        source = NOTEBOOK_CELL.format(key=API_KEY, base_url=emu.openai_base_url, db=str(tmp_path / "jobs.db"))
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        Recording(notebook, timeout=120, kernel_name="python3",
                  resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = notebook.cells[0].outputs
    assert [o.text for o in outputs if o.output_type == "stream"] == ["NotebookDisplay\n"]
    kinds = [kind for kind, _ in messages]
    assert kinds[0] == "display_data" and kinds.count("display_data") == 1 and "update_display_data" in kinds
    first, last = messages[0][1]["text/html"], messages[-1][1]["text/html"]
    assert "asyncbatch-progress" in first and "0/40" in first and "40/40" not in first
    assert "40/40" in last and "done" in last
    (shown,) = [o for o in outputs if o.output_type == "display_data"]  # one output, updated in place
    assert shown.data["text/html"] == last
    text = html.unescape(re.sub(r"<[^>]+>", "", last))
    assert all(len(line) <= NOTEBOOK_WIDTH for line in text.splitlines())  # cut like a terminal line


async def test_ctrl_c_leaves_the_terminal_with_its_cursor(tmp_path: Path, tmux: Tmux) -> None:
    """The live display hides the cursor while it draws; an interrupted run must show it again."""
    async with run_emulator(EmulatorConfig(complete_after=60), data_dir=tmp_path / "emu") as emu:
        db, _ = await submit_job(tmp_path, emu, requests=10)
        tmux.run([sys.executable, "-m", "asyncbatch", "run", "--db", str(db), "--poll-interval", "0.1"], width=80,
                 env=cli_env())
        await anyio.to_thread.run_sync(tmux.wait_for, " running ")
        assert tmux.tmux("display-message", "-p", "-t", "0", "#{cursor_flag}").strip() == "0"  # drawing
        tmux.tmux("send-keys", "-t", "0", "C-c")
        lines = await anyio.to_thread.run_sync(tmux.wait_for_exit)
    assert lines[-1] == "EXIT=130" and any("stopped by SIGINT" in line for line in lines), "\n".join(lines)
    assert tmux.tmux("display-message", "-p", "-t", "0", "#{cursor_flag}").strip() == "1"
