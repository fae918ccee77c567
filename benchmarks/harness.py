"""Shared parts of the benchmarks: input files, an emulator in its own process, measured child processes.

Every contender runs as its own process so that its wall time, CPU time and peak RSS are its own (``wait4``
reports the child's ``ru_maxrss``), and the emulator runs in yet another process whose CPU is read before
and after each run: its share is reported apart, never charged to the client.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BENCH_DIR = Path(__file__).resolve().parent
CONTENDERS = BENCH_DIR / "contenders"
API_KEY = "sk-bench-not-a-secret"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
WORK = Path(os.environ.get("ASYNCBATCH_BENCH_DIR", "/tmp/asyncbatch-bench"))


def openai_line(i: int) -> bytes:
    """A small chat request as an OpenAI batch line (the same for every contender)."""
    return (
        b'{"custom_id":"req-%07d","method":"POST","url":"/v1/chat/completions","body":{"model":"%s",'
        b'"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to number %d"}],'
        b'"max_tokens":16}}' % (i, OPENAI_MODEL.encode(), i)
    )


def anthropic_line(i: int) -> bytes:
    """The same request as a native Anthropic ``{custom_id, params}`` line."""
    return (
        b'{"custom_id":"req-%07d","params":{"model":"%s","system":"You are terse.",'
        b'"messages":[{"role":"user","content":"Say hello to number %d"}],"max_tokens":16}}'
        % (i, ANTHROPIC_MODEL.encode(), i)
    )


def input_file(kind: str, n: int) -> Path:
    """``WORK/inputs/{kind}-{n}.jsonl``, written once and reused."""
    path = WORK / "inputs" / f"{kind}-{n}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make = openai_line if kind == "openai" else anthropic_line
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for start in range(0, n, 10_000):
                out.write(b"".join(make(i) + b"\n" for i in range(start, min(start + 10_000, n))))
        tmp.replace(path)
    return path


# --- the emulator in its own process -------------------------------------------------------------------


class EmulatorProcess:
    """``asyncbatch emulator --port 0`` in a child process; ``cpu()`` is its CPU time so far.

    ``code`` (default: ``$ASYNCBATCH_BENCH_EMULATOR``, else this tree) is a directory holding another version's
    ``asyncbatch/``, whose emulator is run instead: the contenders can be measured against the emulator of an
    earlier round (``git archive <commit> asyncbatch | tar -x -C DIR``).
    """

    def __init__(self, data_dir: Path, *options: str, code: Path | None = None) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        code = code or (Path(os.environ["ASYNCBATCH_BENCH_EMULATOR"]) if os.environ.get("ASYNCBATCH_BENCH_EMULATOR")
                        else None)
        env = {**os.environ, "PYTHONPATH": str(code)} if code is not None else None
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "asyncbatch", "emulator", "--port", "0", "--data-dir", str(data_dir.resolve()), *options],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=code or ROOT, env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line
        self.openai_base_url = line + "/v1"
        self._ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        times = self._ps.cpu_times()
        return float(times.user + times.system)

    def rss_mb(self) -> float:
        return float(self._ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def emulator(data_dir: Path, *options: str) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(data_dir, "--complete-after", "0", *options)
    try:
        yield emu
    finally:
        emu.stop()


# --- measured children ---------------------------------------------------------------------------------


@dataclass
class Measured:
    """One child process (or a sequence of them, for the CLI): wall seconds, CPU seconds, peak RSS."""

    wall: float
    cpu: float
    peak_rss_mb: float
    stdout: str = ""
    emulator_cpu: float = 0.0

    def then(self, other: Measured) -> Measured:
        """This run followed by ``other`` (walls and CPU add up, the peak is the larger one)."""
        return Measured(
            wall=self.wall + other.wall, cpu=self.cpu + other.cpu, peak_rss_mb=max(self.peak_rss_mb, other.peak_rss_mb),
            stdout=self.stdout + other.stdout, emulator_cpu=self.emulator_cpu + other.emulator_cpu,
        )


def bench_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL", "_API_BASE"))}
    env.update(OPENAI_API_KEY=API_KEY, ANTHROPIC_API_KEY=API_KEY, PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 900.0, emu: EmulatorProcess | None = None) -> Measured:
    """Run ``argv`` to its end and measure it with ``wait4``: its own peak RSS and CPU, not ours.

    Output goes to temporary files (no pipes to drain), so the child is reaped here, with its rusage.
    """
    emu_before = emu.cpu() if emu else 0.0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env or bench_env(), cwd=cwd or ROOT, stdout=out, stderr=err)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {stderr[-3000:]}")
    return Measured(
        wall=wall, cpu=usage.ru_utime + usage.ru_stime, peak_rss_mb=usage.ru_maxrss / 1024,
        stdout=stdout, emulator_cpu=(emu.cpu() - emu_before) if emu else 0.0,
    )


# --- reporting -----------------------------------------------------------------------------------------


@dataclass
class Series:
    """The runs of one contender at one size."""

    name: str
    runs: list[Measured] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(run, attr) for run in self.runs))


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A Markdown table."""
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def save(name: str, payload: object) -> Path:
    """Raw figures as JSON under ``WORK/results``, for the README and for later comparison."""
    path = WORK / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=lambda o: o.__dict__))
    return path


# --- asyncbatch through its command line ---------------------------------------------------------------

ASYNCBATCH = str(Path(PYTHON).parent / "asyncbatch")


def asyncbatch_cli_job(n: int, workdir: Path) -> tuple[dict[str, Measured], Path]:
    """``asyncbatch submit`` + ``run`` + ``results`` on ``n`` OpenAI requests, each its own measured process
    against an emulator in another; returns the three measurements and the results file."""
    db = str(workdir / "jobs.db")
    out = workdir / "results.jsonl"
    with emulator(workdir / "emulator") as emu:
        submit = run_child([ASYNCBATCH, "submit", "--db", db, "--base-url", emu.openai_base_url,
                            str(input_file("openai", n))], emu=emu)
        job_id = submit.stdout.strip()
        run = run_child([ASYNCBATCH, "run", "--db", db, "--poll-interval", "1", "--no-progress", job_id], emu=emu)
        results = run_child([ASYNCBATCH, "results", "--db", db, job_id, "-o", str(out)], emu=emu)
    return {"submit": submit, "run": run, "results": results}, out
