"""Pollers: 10,000 provider batches in flight, polled by one ``asyncbatch run``; then a restart re-attaches.

    .venv/bin/python benchmarks/pollers.py --shards 10000 --minutes 10

A job of 10,000 requests is run with ``--max-requests-per-batch 1`` against an emulator whose batches never
end (``--complete-after 86400``), so 10,000 batches stay in flight. Once all are submitted, the CPU time of
the ``run`` process is read over each following minute (default poll interval: 5 s), and averaged over them
all. Then the process is killed (SIGKILL, as a crash) and a new ``asyncbatch run`` is started: we time how long
it takes until it holds the lease on every live shard, read from the store (process start included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]
from harness import PYTHON, WORK, EmulatorProcess, bench_env, input_file, run_child, save, table

ASYNCBATCH = str(Path(PYTHON).parent / "asyncbatch")


def shard_states(db: Path) -> list[tuple[str, str | None]]:
    """(phase, lease owner) of every shard, read without disturbing the writer (WAL)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT phase, lease_owner FROM shards").fetchall()


def polls_seen(emu: EmulatorProcess) -> dict[str, int]:
    """The emulator's count of the calls that read batches (``GET /v1/batches`` pages, ``GET .../{batch_id}``)."""
    with urllib.request.urlopen(emu.url + "/_emulator/ledger") as answer:
        calls: dict[str, int] = json.load(answer).get("calls", {})
    return {route: n for route, n in calls.items() if route.startswith("GET /v1/batches")}


def wait_for(predicate_name: str, check: object, timeout: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if check():  # type: ignore[operator]
            return time.perf_counter() - started
        time.sleep(0.02)
    raise TimeoutError(predicate_name)


def start_run(db: Path, job_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([ASYNCBATCH, "run", "--db", str(db), "--max-requests-per-batch", "1", "--no-progress",
                             job_id], env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=10)
    args = parser.parse_args()
    workdir = WORK / "pollers"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    db = workdir / "jobs.db"
    emu = EmulatorProcess(workdir / "emulator", "--complete-after", "86400")
    figures: dict[str, float] = {}
    proc: subprocess.Popen[bytes] | None = None
    try:
        submit = run_child([ASYNCBATCH, "submit", "--db", str(db), "--base-url", emu.openai_base_url,
                            str(input_file("openai", args.shards))])
        job_id = submit.stdout.strip()
        proc = start_run(db, job_id)
        ps = psutil.Process(proc.pid)
        figures["submit_all_s"] = wait_for("all submitted", lambda: sum(
            phase == "submitted" for phase, _ in shard_states(db)) == args.shards, 3600)
        print(f"{args.shards} batches in flight after {figures['submit_all_s']:.1f} s", file=sys.stderr)
        calls_before = polls_seen(emu)
        for minute in range(1, args.minutes + 1):
            cpu0, emu0 = sum(ps.cpu_times()[:2]), emu.cpu()
            time.sleep(60)
            figures[f"cpu_minute_{minute}"] = sum(ps.cpu_times()[:2]) - cpu0
            figures[f"emulator_cpu_minute_{minute}"] = emu.cpu() - emu0
            print(f"minute {minute}: run used {figures[f'cpu_minute_{minute}']:.2f} CPU s", file=sys.stderr)
        figures["rss_mb"] = ps.memory_info().rss / 2**20
        figures.update({f"calls {route}": n - calls_before.get(route, 0) for route, n in polls_seen(emu).items()})
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        dead_owner = f":{proc.pid}:"
        started = time.perf_counter()
        proc = start_run(db, job_id)
        mine = f":{proc.pid}:"

        def attached() -> bool:
            states = shard_states(db)
            return all(owner is not None and mine in owner for phase, owner in states if phase == "submitted")

        wait_for("re-attached", attached, 120)
        figures["reattach_s"] = time.perf_counter() - started  # process start included
        assert not any(dead_owner in (owner or "") for _, owner in shard_states(db))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("run did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
                proc.kill()
                proc.wait()
        emu.stop()
    rows = [[f"CPU s in minute {m} of polling {args.shards} batches", figures[f"cpu_minute_{m}"],
             f"{100 * figures[f'cpu_minute_{m}'] / 60:.1f}% of one core"] for m in range(1, args.minutes + 1)]
    average = sum(figures[f"cpu_minute_{m}"] for m in range(1, args.minutes + 1)) / args.minutes
    figures["cpu_per_minute_average"] = average
    rows.append([f"CPU s per minute, averaged over {args.minutes} minutes", average,
                 f"{100 * average / 60:.2f}% of one core"])
    rows.append([f"all {args.shards} batches created after (s)", figures["submit_all_s"], "from the start of run"])
    rows.append(["restarted `asyncbatch run` holds every lease after (s)", figures["reattach_s"],
                 "process start included"])
    rows.append(["RSS of the run process (MB)", figures["rss_mb"], ""])
    rows += [[f"{route} during the {args.minutes} minutes", n, "emulator's count"]
             for route, n in figures.items() if route.startswith("calls ")]
    print(table(rows, ["measure", "value", "note"]))
    print(f"raw figures: {save('pollers', figures)}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
