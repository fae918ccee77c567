"""PostgreSQL against SQLite: the store's own rates, and workers sharing one PostgreSQL store.

    .venv/bin/python benchmarks/postgres.py ingest --sizes 50000 1000000 --rounds 3
    .venv/bin/python benchmarks/postgres.py workers --n 1000000 --workers 1 2 4

``ingest`` drives each store as the engine does, in this process, with nothing else in the way: a job of N
requests stored (``create_job``), planned into shards of 50,000 (the OpenAI limit), each shard walked to
``ended``, and its results ingested in chunks of 10,000 (the engine's default), shuffled as providers return them,
then finished. It reports requests per second for submit, planning and ingestion on each backend, and the ratio.

``workers`` runs N requests end to end through 1, 2 and 4 ``asyncbatch worker`` processes on one PostgreSQL
store against an emulator in its own process (instant completion): wall time from the workers' start to the
job's end, and the peak RSS of each worker (``wait4``).

PostgreSQL is a throwaway cluster of this machine's server started for the run (``--pg URL`` uses another), with
``fsync`` on and ``synchronous_commit=off``: commits are not flushed one by one, as SQLite's WAL with
``synchronous=NORMAL`` does not flush them either. SQLite is a file in ``$ASYNCBATCH_BENCH_DIR``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import ASYNCBATCH, WORK, bench_env, emulator, input_file, save, table

from asyncbatch.engine.planning import plan_shard
from asyncbatch.model import (
    BatchStatus,
    Job,
    JobStatus,
    NewRequest,
    Outcome,
    RemoteBatch,
    RequestState,
    ResultRow,
    Settlement,
    ShardLimits,
)
from asyncbatch.store import Store, open_store
from tests.pg import Cluster, server_bin, with_url_db

SHARD = ShardLimits(max_requests=50_000, max_bytes=200 * 2**20)
CHUNK = 10_000
BODY = (b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},'
        b'{"role":"user","content":"Say hello to number %d"}],"max_tokens":16}')
ANSWER = (b'{"id":"chatcmpl-%d","object":"chat.completion","created":1764900000,"model":"gpt-4o-mini-2024-07-18",'
          b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello, number %d! Nice to meet you.",'
          b'"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":'
          b'21,"completion_tokens":11,"total_tokens":32},"system_fingerprint":"fp_0000000000"}')
DONE = Settlement(state=RequestState.PENDING, error_code="missing", error_message="no result", max_attempts=3)


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """An admin URL: ``url``, or a throwaway cluster for the run."""
    if url:
        yield url
        return
    bindir = server_bin()
    if bindir is None:
        sys.exit("no PostgreSQL server on this machine: install postgresql, or pass --pg URL")
    cluster = Cluster(bindir, settings="-c fsync=on -c synchronous_commit=off -c shared_buffers=256MB "
                                       "-c max_wal_size=4GB")
    cluster.start()
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def new_database(admin: str) -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return with_url_db(admin, name)


async def requests(n: int) -> AsyncIterator[list[NewRequest]]:
    for start in range(0, n, CHUNK):
        chunk = []
        for i in range(start, min(n, start + CHUNK)):
            body = BODY % i
            chunk.append(NewRequest(custom_id=f"req-{i:07d}", route="", url="/v1/chat/completions",
                                    model="gpt-4o-mini", body=body, size=len(body) + 60, line=i + 1))
        yield chunk


async def one_store(url: str, n: int) -> dict[str, float]:
    """Seconds for each step of one job of ``n`` requests on the store at ``url``."""
    store: Store = open_store(url)
    await store.open()
    try:
        now = time.time()
        job = Job(id="bench", provider="openai", base_url=None, endpoint="/v1/chat/completions",
                  completion_window="24h", max_attempts=3, metadata={}, status=JobStatus.OPEN, created_at=now,
                  updated_at=now)
        seconds: dict[str, float] = {}
        started = time.perf_counter()
        await store.create_job(job, requests(n))
        seconds["submit"] = time.perf_counter() - started
        started = time.perf_counter()
        shards = []
        while shard := await plan_shard(store, job.id, lambda route: SHARD,
                                        lambda route: lambda custom_id, rid, token: custom_id):
            shards.append(shard)
        seconds["plan"] = time.perf_counter() - started
        leases = await store.claim_shards(job.id, "bench:1:x", 3600)
        for number, lease in enumerate(leases):
            await store.shard_uploaded(lease, f"file-{number}")
            await store.shard_creating(lease)
            await store.shard_submitted(lease, RemoteBatch(id=f"batch-{number}", status=BatchStatus.IN_PROGRESS,
                                                           raw_status="in_progress"))
            await store.shard_polled(lease, RemoteBatch(id=f"batch-{number}", status=BatchStatus.COMPLETED,
                                                        raw_status="completed"))
        rng = random.Random(1)
        started = time.perf_counter()
        for lease in leases:
            members = list((await store.member_requests(lease.shard_id)).values())
            rng.shuffle(members)  # providers return results in any order
            for begin in range(0, len(members), CHUNK):
                rows = [ResultRow(rid=rid, attempt=attempt, outcome=Outcome.SUCCEEDED, state=RequestState.SUCCEEDED,
                                  status_code=200, body=ANSWER % (rid, rid), input_tokens=21, output_tokens=11,
                                  model="gpt-4o-mini", request_id=f"req_{rid}")
                        for rid, attempt in members[begin:begin + CHUNK]]
                await store.ingest(lease, rows)
            await store.ingest(lease, [], finish=DONE, succeeded=[rid for rid, _ in members])
        seconds["ingest"] = time.perf_counter() - started
        assert (await store.counts(job.id)).completed == n
        return seconds
    finally:
        await store.close()


def ingest_bench(args: argparse.Namespace) -> None:
    rows, raw = [], {}
    with postgres(args.pg) as admin:
        for n in args.sizes:
            runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgres": []}
            for _ in range(args.rounds):  # alternating, medians: the machine is shared
                workdir = WORK / "postgres" / str(n)
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                runs["sqlite"].append(anyio.run(one_store, str(workdir / "jobs.db"), n))
                shutil.rmtree(workdir, ignore_errors=True)
                runs["postgres"].append(anyio.run(one_store, new_database(admin), n))
                print(f"n={n}: sqlite {runs['sqlite'][-1]}, postgres {runs['postgres'][-1]}", file=sys.stderr,
                      flush=True)
            raw[n] = runs
            for step in ("submit", "plan", "ingest"):
                sqlite, pg = (statistics.median(run[step] for run in runs[b]) for b in ("sqlite", "postgres"))
                rows.append([n, step, n / sqlite, n / pg, sqlite / pg])
    print(table(rows, ["N", "step", "SQLite req/s", "PostgreSQL req/s", "PostgreSQL / SQLite"]))
    print(f"raw figures: {save('postgres-ingest', raw)}", file=sys.stderr)


def workers_bench(args: argparse.Namespace) -> None:
    import psycopg

    rows, raw = [], {}
    source = input_file("openai", args.n)
    with postgres(args.pg) as admin, emulator(WORK / "postgres" / "emulator") as emu:
        for count in args.workers:
            url = new_database(admin)
            submitted = subprocess.run([ASYNCBATCH, "submit", "--db", url, "--base-url", emu.openai_base_url,
                                        str(source)], env=bench_env(), capture_output=True, check=True)
            job_id = submitted.stdout.decode().split()[-1]
            started = time.perf_counter()
            procs = [subprocess.Popen([ASYNCBATCH, "worker", "--db", url, "--poll-interval", "1"], env=bench_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(count)]
            with psycopg.connect(url, autocommit=True) as conn:
                while conn.execute("SELECT status FROM jobs WHERE id = %s", (job_id,)).fetchone() != ("done",):
                    time.sleep(0.2)
                    if any(p.poll() is not None for p in procs):
                        raise RuntimeError("a worker exited before the job ended")
                wall = time.perf_counter() - started
                (done,) = conn.execute("SELECT count(*) FROM requests WHERE state = 'succeeded'").fetchone() or (0,)
            peaks = []
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
                _, _, usage = os.wait4(proc.pid, 0)
                peaks.append(usage.ru_maxrss / 1024)
            assert done == args.n, f"{done} of {args.n} succeeded"
            raw[count] = {"wall": wall, "peak_rss_mb": peaks}
            rows.append([count, wall, args.n / wall, max(peaks), min(peaks)])
            print(f"{count} workers: {wall:.1f}s, peak RSS {', '.join(f'{p:.0f}' for p in peaks)} MB",
                  file=sys.stderr, flush=True)
    print(table(rows, ["workers", "wall s", "requests/s", "max peak RSS MB", "min peak RSS MB"]))
    print(f"raw figures: {save('postgres-workers', raw)}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", help="an admin URL of a PostgreSQL server (default: a throwaway cluster)")
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("ingest")
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 1_000_000])
    p.add_argument("--rounds", type=int, default=3)
    p = sub.add_parser("workers")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    ingest_bench(args) if args.bench == "ingest" else workers_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

