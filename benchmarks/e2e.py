"""End to end on the emulator: from a JSONL file on disk to every result parsed, asyncbatch and its peers.

    .venv/bin/python benchmarks/e2e.py --sizes 10000 50000 200000 --rounds 3

Contenders run alternately (one of each, then the next round), each in its own process against a fresh
emulator in another process (instant completion). Reported per size: medians of wall time, the
contender's CPU time and peak RSS, the emulator's CPU time, and asyncbatch's ratio to each peer (client CPU,
wall, peak RSS). ``ASYNCBATCH_BENCH_EMULATOR=DIR`` runs the emulator of another version (see ``harness``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from harness import (
    CONTENDERS,
    PYTHON,
    WORK,
    Measured,
    Series,
    asyncbatch_cli_job,
    emulator,
    input_file,
    run_child,
    save,
    table,
)

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
    steps, out = asyncbatch_cli_job(n, workdir)
    with out.open("rb") as handle:
        ok = sum(1 for line in handle if b'"status_code":200' in line)
    if ok != n:
        raise RuntimeError(f"asyncbatch-cli: {ok} of {n} results")
    total = steps["submit"].then(steps["run"]).then(steps["results"])
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
    # the least work that keeps asyncbatch's durability: what its targets against the SDKs must be judged by
    "floor-openai": contender_script("durable_floor.py", "openai", "--kind", "openai"),
    "floor-anthropic": contender_script("durable_floor.py", "anthropic", "--kind", "anthropic"),
}
# (contender, peer) pairs whose ratios are reported
PAIRS = [("asyncbatch-api", "openai-sdk"), ("asyncbatch-cli", "openai-sdk"), ("asyncbatch-api", "litellm"),
         ("asyncbatch-cli", "litellm"), ("asyncbatch-anthropic", "anthropic-sdk"),
         ("floor-openai", "openai-sdk"), ("floor-anthropic", "anthropic-sdk")]


def report(series: dict[tuple[int, str], Series]) -> str:
    """Medians per size and contender, then asyncbatch / peer ratios of client CPU, wall time and peak RSS."""
    rows = [[n, name, s.median("wall"), s.median("cpu"), s.median("peak_rss_mb"), s.median("emulator_cpu")]
            for (n, name), s in series.items()]
    ratios = []
    for n in sorted({n for n, _ in series}):
        for ours, peer in PAIRS:
            if (n, ours) in series and (n, peer) in series:
                a, b = series[(n, ours)], series[(n, peer)]
                ratios.append([n, f"{ours} / {peer}", a.median("cpu") / b.median("cpu"),
                               a.median("wall") / b.median("wall"), a.median("peak_rss_mb") / b.median("peak_rss_mb")])
    return "\n\n".join((
        table(rows, ["N", "contender", "wall s", "CPU s", "peak RSS MB", "emulator CPU s"]),
        table(ratios, ["N", "ratio", "client CPU", "wall", "peak RSS"]),
    ))


def load(path: Path) -> dict[tuple[int, str], Series]:
    """Series saved by an earlier run (``results/e2e-*.json``), to report them again."""
    raw = json.loads(path.read_text())
    series: dict[tuple[int, str], Series] = {}
    for key, runs in raw.items():
        n, name = key.split("/")
        series[(int(n), name)] = Series(name, [Measured(**run) for run in runs])
    return series


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(CONTENDER_RUNNERS), default=list(CONTENDER_RUNNERS))
    parser.add_argument("--report", type=Path, metavar="E2E.json", help="only report the figures of an earlier run")
    args = parser.parse_args()
    if args.report:
        print(report(load(args.report)))
        return 0
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
    print(report(series))
    print(f"raw figures: {save('e2e', {f'{n}/{name}': s.runs for (n, name), s in series.items()})}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
