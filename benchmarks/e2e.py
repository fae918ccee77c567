"""End to end on the emulator: from a JSONL file on disk to every result parsed, asyncbatch and its peers.

    .venv/bin/python benchmarks/e2e.py --sizes 10000 50000 200000 --rounds 3

Contenders run alternately (one of each, then the next round), each in its own process against a fresh
emulator in another process (instant completion). Reported per size: medians of wall time, the
contender's CPU time and peak RSS, the emulator's CPU time, and asyncbatch's ratio to each peer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from harness import CONTENDERS, PYTHON, WORK, Measured, Series, emulator, input_file, run_child, save, table

ASYNCBATCH = str(Path(PYTHON).parent / "asyncbatch")

Runner = Callable[[int, Path], Measured]


def contender_script(script: str, kind: str, *extra: str) -> Runner:
    """A contender that is one Python script: ``--base-url --input --workdir`` (+ ``extra``)."""

    def run(n: int, workdir: Path) -> Measured:
        with emulator(workdir / "emulator") as emu:
            base = emu.openai_base_url if kind == "openai" else emu.url
            argv = [PYTHON, str(CONTENDERS / script), "--base-url", base, "--input", str(input_file(kind, n)),
                    "--workdir", str(workdir), *extra]
            return _checked(run_child(argv, emu=emu), n)

    return run


def asyncbatch_cli(n: int, workdir: Path) -> Measured:
    """(b): ``asyncbatch submit`` + ``run`` + ``results``, three processes; the peak is the largest one's."""
    db = str(workdir / "jobs.db")
    with emulator(workdir / "emulator") as emu:
        submit = run_child([ASYNCBATCH, "submit", "--db", db, "--base-url", emu.openai_base_url,
                            str(input_file("openai", n))], emu=emu)
        job_id = submit.stdout.strip()
        run = run_child([ASYNCBATCH, "run", "--db", db, "--poll-interval", "1", "--no-progress", job_id], emu=emu)
        out = workdir / "results.jsonl"
        results = run_child([ASYNCBATCH, "results", "--db", db, job_id, "-o", str(out)], emu=emu)
    with out.open("rb") as handle:
        ok = sum(1 for line in handle if b'"status_code":200' in line)
    if ok != n:
        raise RuntimeError(f"asyncbatch-cli: {ok} of {n} results")
    total = submit.then(run).then(results)
    total.stdout = json.dumps({"ok": ok})
    return total


def _checked(measured: Measured, n: int) -> Measured:
    summary = json.loads(measured.stdout.strip().splitlines()[-1])
    if summary["ok"] != n:
        raise RuntimeError(f"{summary['ok']} of {n} results")
    return measured


CONTENDER_RUNNERS: dict[str, Runner] = {
    "asyncbatch-api": contender_script("asyncbatch_api.py", "openai"),
    "asyncbatch-cli": asyncbatch_cli,
    "openai-sdk": contender_script("openai_sdk.py", "openai"),
    "litellm": contender_script("litellm_batch.py", "openai"),
    "asyncbatch-anthropic": contender_script("asyncbatch_api.py", "anthropic", "--provider", "anthropic"),
    "anthropic-sdk": contender_script("anthropic_sdk.py", "anthropic"),
}
# which asyncbatch run each peer is compared with
BASELINE = {"openai-sdk": "asyncbatch-api", "litellm": "asyncbatch-api", "asyncbatch-cli": "asyncbatch-api",
            "anthropic-sdk": "asyncbatch-anthropic"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDER_RUNNERS), default=list(CONTENDER_RUNNERS))
    args = parser.parse_args()
    for n in args.sizes:  # inputs are written before any clock starts
        input_file("openai", n)
        input_file("anthropic", n)
    series = {(n, name): Series(name) for n in args.sizes for name in args.only}
    for round_no in range(args.rounds):
        for n in args.sizes:
            for name in args.only:
                workdir = WORK / "e2e" / f"{name}-{n}"
                shutil.rmtree(workdir, ignore_errors=True)
                workdir.mkdir(parents=True)
                measured = CONTENDER_RUNNERS[name](n, workdir)
                series[(n, name)].runs.append(measured)
                shutil.rmtree(workdir, ignore_errors=True)
                print(f"round {round_no + 1} n={n} {name}: wall {measured.wall:.2f}s cpu {measured.cpu:.2f}s "
                      f"rss {measured.peak_rss_mb:.0f} MB emulator cpu {measured.emulator_cpu:.2f}s",
                      file=sys.stderr, flush=True)
    rows = []
    for (n, name), s in series.items():
        base = series.get((n, BASELINE.get(name, "")))
        ratio_wall = f"{base.median('wall') / s.median('wall'):.2f}" if base else ""
        ratio_rss = f"{base.median('peak_rss_mb') / s.median('peak_rss_mb'):.2f}" if base else ""
        rows.append([n, name, s.median("wall"), s.median("cpu"), s.median("peak_rss_mb"), s.median("emulator_cpu"),
                     ratio_wall, ratio_rss])
    print(table(rows, ["N", "contender", "wall s", "CPU s", "peak RSS MB", "emulator CPU s",
                       "asyncbatch/peer wall", "asyncbatch/peer RSS"]))
    print(f"raw figures: {save('e2e', {f'{n}/{name}': s.runs for (n, name), s in series.items()})}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
