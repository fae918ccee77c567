"""The emulator's own work per batch: what every contender waits for, and what every test and demo pays.

    .venv/bin/python benchmarks/emulator.py --n 50000 --rounds 5
    .venv/bin/python benchmarks/emulator.py --n 50000 --rounds 5 --code /tmp/before   # another version's emulator

Two measures, OpenAI and Anthropic, each in a fresh child process (the version under ``--code`` first on its
path), medians of ``--rounds``:

* **batch work**: the CPU time of the batch's own steps in process, as the server runs them: checking the input
  (OpenAI's validation; Anthropic's create, which reads the request array and spools it), running every
  request (outcome, result line, ledger), ending the batch. No HTTP.
* **whole process**: the CPU time of an ``asyncbatch emulator`` process over one batch driven by a minimal
  aiohttp client: upload (OpenAI), create, polls until ended, download of the results. HTTP included.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from harness import ROOT, EmulatorProcess, input_file, save, table

# Runs in a child process: the batch's steps, called as the server calls them, timed with process CPU time.
_BATCH_WORK = textwrap.dedent('''
    import json, sys, tempfile, time
    from pathlib import Path
    from asyncbatch.emulator.config import EmulatorConfig
    from asyncbatch.emulator.ledger import Ledger
    from asyncbatch.emulator.runs import Run
    from asyncbatch.model import Outcome
    kind, source = sys.argv[1], Path(sys.argv[2])
    config, work = EmulatorConfig(), Path(tempfile.mkdtemp())
    clock = time.process_time
    if kind == "openai":
        from asyncbatch.emulator.openai_api import OpenAILines, validate_input
        started = clock()
        offsets = validate_input(source, "/v1/chat/completions", config).offsets
        fmt, lines = OpenAILines("/v1/chat/completions"), source
    else:
        from asyncbatch.emulator.anthropic_api import AnthropicLines, spool_requests
        body = work / "body.json"
        with open(source, "rb") as handle:
            body.write_bytes(b'{"requests":[' + b",".join(line.rstrip() for line in handle) + b"]}")
        started = clock()
        lines = work / "requests.jsonl"
        offsets = spool_requests(body, lines, config)
        fmt = AnthropicLines()
    checked = clock()
    run = Run(fmt=fmt, batch_id="batch_bench", input_path=lines, offsets=offsets, workdir=work, shuffle_seed="0:1")
    ledger = Ledger()
    run.run_until(run.total, ledger, config)
    run.finish(Outcome.EXPIRED, ledger)
    done = clock()
    assert run.counts[Outcome.SUCCEEDED] == run.total, run.counts
    print(json.dumps({"check": checked - started, "run": done - checked, "total": done - started}))
''')

# Runs in a child process: one batch through the emulator's HTTP API, the way an SDK drives it.
_DRIVER = textwrap.dedent('''
    import asyncio, json, sys
    import aiohttp
    kind, url, source = sys.argv[1], sys.argv[2], sys.argv[3]
    async def main():
        headers = {"authorization": "Bearer sk-bench", "x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
        async with aiohttp.ClientSession(headers=headers) as http:
            if kind == "openai":
                with open(source, "rb") as handle:
                    form = aiohttp.FormData()
                    form.add_field("purpose", "batch")
                    form.add_field("file", handle, filename="input.jsonl")
                    async with http.post(url + "/v1/files", data=form) as response:
                        file_id = (await response.json())["id"]
                body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
                async with http.post(url + "/v1/batches", json=body) as response:
                    batch = await response.json()
                while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    async with http.get(url + "/v1/batches/" + batch["id"]) as response:
                        batch = await response.json()
                results = url + "/v1/files/" + batch["output_file_id"] + "/content"
            else:
                with open(source, "rb") as handle:
                    body = b'{"requests":[' + b",".join(line.rstrip() for line in handle) + b"]}"
                async with http.post(url + "/v1/messages/batches", data=body,
                                     headers={"content-type": "application/json"}) as response:
                    batch = await response.json()
                while batch["processing_status"] != "ended":
                    async with http.get(url + "/v1/messages/batches/" + batch["id"]) as response:
                        batch = await response.json()
                results = batch["results_url"]
            lines = 0
            async with http.get(results) as response:
                async for chunk in response.content.iter_chunked(1 << 20):
                    lines += chunk.count(b"\\n")
            print(json.dumps({"lines": lines}))
    asyncio.run(main())
''')


def child_env(code: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return env


def batch_work(kind: str, n: int, code: Path | None) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _BATCH_WORK, kind, str(input_file(kind, n))], env=child_env(code),
                         cwd=code or ROOT, capture_output=True, check=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def whole_process(kind: str, n: int, code: Path | None) -> float:
    with tempfile.TemporaryDirectory() as data:
        emu = EmulatorProcess(Path(data), "--complete-after", "0", code=code)
        try:
            before = emu.cpu()
            out = subprocess.run([sys.executable, "-c", _DRIVER, kind, emu.url, str(input_file(kind, n))],
                                 capture_output=True, check=True, text=True)
            used = emu.cpu() - before
        finally:
            emu.stop()
    lines = json.loads(out.stdout.strip().splitlines()[-1])["lines"]
    if lines != n:
        raise RuntimeError(f"{kind}: {lines} result lines for {n} requests")
    return used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--code", type=Path, help="a tree holding another version's asyncbatch/ (its emulator)")
    args = parser.parse_args()
    code = args.code.resolve() if args.code else None
    figures: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for kind in ("openai", "anthropic"):
            for part, seconds in batch_work(kind, args.n, code).items():
                figures.setdefault(f"{kind}/{part}", []).append(seconds)
            figures.setdefault(f"{kind}/process", []).append(whole_process(kind, args.n, code))
    rows = [[name, statistics.median(values), min(values), max(values)] for name, values in figures.items()]
    print(table(rows, [f"N = {args.n}: CPU s", "median", "min", "max"]))
    print(f"raw figures: {save('emulator', {'code': str(code), 'n': args.n, **figures})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
