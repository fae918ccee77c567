"""Memory does not depend on how large requests and results are: chunks are bounded in bytes, not only in count.

Each test runs the real CLI in a child process and reads that process's own peak RSS (``wait4``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio

from asyncbatch.emulator import EmulatorConfig, run_emulator
from tests.reliability.support import RUN_ARGS, cli, cli_env, command

MB = 1024 * 1024


# A forked child's peak RSS starts at its parent's (the pages it shares before exec count): the CLI is started
# by a small fresh interpreter, whose own wait4 reports the CLI's peak alone.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(p.pid, 0); "
            "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)")


def _peak_rss(args: list[str]) -> tuple[int, int, str]:
    """Run the CLI to its end: (exit code, its peak RSS in bytes, its stderr)."""
    measured = subprocess.run([sys.executable, "-c", _MEASURE, *command(*args)], env=cli_env(), check=True,
                              capture_output=True, timeout=300)
    code, peak = measured.stdout.split()[-2:]
    return int(code), int(peak), measured.stderr.decode()


async def test_large_results_are_ingested_in_bounded_chunks(tmp_path: Path) -> None:
    """600 embedding results of 4 x 3,072 dimensions (about 75 MB of output) fit in one ingest chunk by count;
    the byte bound commits them 16 MB at a time, so `run` peaks far below the output's size."""
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-large", "dimensions": 3072,
                       "input": [f"document {i} part {k}" for k in range(4)]}} for i in range(600)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        submitted = await cli("submit", str(source), "--db", str(db), "--base-url", emu.openai_base_url)
        assert submitted.code == 0, submitted.err
        code, peak, err = await anyio.to_thread.run_sync(_peak_rss, ["run", "--db", str(db), *RUN_ARGS])
        assert code == 0, err
    exported = await cli("results", submitted.out.split()[-1], "--db", str(db), "-o", str(tmp_path / "out.jsonl"))
    assert exported.code == 0, exported.err
    output = (tmp_path / "out.jsonl").stat().st_size
    assert output > 60 * MB, output
    print(f"run: peak RSS {peak / MB:.0f} MB for {output / MB:.0f} MB of results")
    assert peak < 120 * MB, f"run peaked at {peak / MB:.0f} MB for {output / MB:.0f} MB of results"
    with (tmp_path / "out.jsonl").open() as handle:
        vectors = [json.loads(line)["response"]["body"]["data"] for line in handle]
    assert len(vectors) == 600 and all(len(v) == 4 and len(v[0]["embedding"]) == 3072 for v in vectors)


async def test_large_requests_are_stored_in_bounded_chunks(tmp_path: Path) -> None:
    """300 requests of 300 KB (90 MB of input) fit in one submit chunk by count; the byte bound stores them
    8 MB at a time, so `submit` peaks far below the input's size."""
    source = tmp_path / "in.jsonl"
    with source.open("w") as handle:
        for i in range(300):
            text = f"chapter {i} " + "lorem ipsum dolor sit amet " * 11_000
            handle.write(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": "gpt-5.4-mini",
                                              "messages": [{"role": "user", "content": text}]}}) + "\n")
    assert source.stat().st_size > 85 * MB
    args = ["submit", str(source), "--db", str(tmp_path / "jobs.db"), "--base-url", "http://127.0.0.1:9/v1"]
    code, peak, err = await anyio.to_thread.run_sync(_peak_rss, args)
    assert code == 0, err
    print(f"submit: peak RSS {peak / MB:.0f} MB for {source.stat().st_size / MB:.0f} MB of input")
    assert peak < 110 * MB, f"submit peaked at {peak / MB:.0f} MB for {source.stat().st_size / MB:.0f} MB of input"
