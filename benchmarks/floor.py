"""Ingestion against its floor: how close asyncbatch's result ingestion comes to the least work possible.

    .venv/bin/python benchmarks/floor.py --n 50000 --rounds 3

The floor is the same output file decoded with msgspec (one Struct per line, the body kept raw) and inserted
into SQLite (WAL, synchronous=NORMAL) with one ``executemany`` in one transaction. It is measured twice: on
the file already on disk, and with the download from the emulator in front (what asyncbatch also does).
asyncbatch's ingestion is timed in its own process from the event that says the batch ended to the event
that says its results are committed (download, decode, classify, upsert, settle each request, in chunks
with their leases). The emulator's share (validating and running the batch, serving the file) is reported
apart.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import anyio
import httpx
import msgspec
from contenders.durable_floor import OpenAIResult
from harness import API_KEY, CONTENDERS, PYTHON, WORK, emulator, input_file, run_child, save, table


def output_file(base_url: str, source: Path, dest: Path) -> tuple[float, float]:
    """Run one batch of ``source`` on the emulator and download its output to ``dest``.

    Returns (seconds the emulator took to run the batch, seconds the download took).
    """
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        with source.open("rb") as handle:
            file_id = client.post("/files", files={"file": handle}, data={"purpose": "batch"}).json()["id"]
        batch = client.post("/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                              "completion_window": "24h"}).json()
        started = time.perf_counter()
        while (batch := client.get(f"/batches/{batch['id']}").json())["status"] != "completed":
            time.sleep(0.05)
        ran = time.perf_counter() - started
        started = time.perf_counter()
        with client.stream("GET", f"/files/{batch['output_file_id']}/content") as response, dest.open("wb") as out:
            for chunk in response.iter_bytes(1 << 16):
                out.write(chunk)
        return ran, time.perf_counter() - started


def floor(path: Path, db_path: Path) -> float:
    """Decode every line of ``path`` and insert it in one transaction; returns the seconds taken."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE results (custom_id TEXT PRIMARY KEY, line_id TEXT, status_code INTEGER, "
               "request_id TEXT, body BLOB)")
    decoder = msgspec.json.Decoder(OpenAIResult)
    started = time.perf_counter()
    with path.open("rb") as handle:
        lines = [decoder.decode(line) for line in handle if line.strip()]
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", [
        (x.custom_id, x.id, x.response.status_code if x.response else None,
         x.response.request_id if x.response else None, bytes(x.response.body) if x.response else None)
        for x in lines
    ])
    db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.n
    source = input_file("openai", n)
    runs: dict[str, list[float]] = {k: [] for k in ("emulator_run", "download", "floor", "asyncbatch_ingest",
                                                     "asyncbatch_emulator_cpu")}
    for _ in range(args.rounds):
        workdir = WORK / "floor"
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        with emulator(workdir / "emulator") as emu:
            ran, downloaded = output_file(emu.openai_base_url, source, workdir / "output.jsonl")
        runs["emulator_run"].append(ran)
        runs["download"].append(downloaded)
        runs["floor"].append(anyio.run(anyio.to_thread.run_sync, floor, workdir / "output.jsonl",
                                       workdir / "floor.db"))
        with emulator(workdir / "emulator2") as emu:
            measured = run_child([PYTHON, str(CONTENDERS / "asyncbatch_api.py"), "--base-url", emu.openai_base_url,
                                  "--input", str(source), "--workdir", str(workdir), "--ingest-timing"], emu=emu)
        runs["asyncbatch_ingest"].append(msgspec.json.decode(measured.stdout.splitlines()[-1])["ingest"])
        runs["asyncbatch_emulator_cpu"].append(measured.emulator_cpu)
        shutil.rmtree(workdir, ignore_errors=True)
        print({k: round(v[-1], 3) for k, v in runs.items()}, file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    floor_local = n / med["floor"]
    floor_fetched = n / (med["floor"] + med["download"])
    ours = n / med["asyncbatch_ingest"]
    print(table([
        ["floor: decode + insert (file on disk)", med["floor"], floor_local, ours / floor_local],
        ["floor: download + decode + insert", med["floor"] + med["download"], floor_fetched, ours / floor_fetched],
        ["asyncbatch ingestion (download included)", med["asyncbatch_ingest"], ours, 1.0],
    ], [f"N = {n}", "seconds", "rows/s", "asyncbatch rate / this"]))
    print(f"\nemulator's share: running the batch {med['emulator_run']:.2f} s, serving the output file "
          f"{med['download']:.2f} s; its CPU during the asyncbatch run {med['asyncbatch_emulator_cpu']:.2f} s")
    print(f"raw figures: {save('floor', runs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
