"""Memory growth: peak RSS of ``asyncbatch submit`` + ``run`` + ``results`` for a small and a huge job.

    .venv/bin/python benchmarks/memory.py --sizes 10000 1000000

Each command is its own process against an emulator in another process (instant completion); the peak
RSS of each comes from ``wait4``. Memory must not grow with the job: the target is peak(1,000,000) <= 1.3 x
peak(10,000) for every command.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from harness import WORK, Measured, asyncbatch_cli_job, input_file, save, table


def cli_run(n: int, workdir: Path) -> dict[str, Measured]:
    steps, out = asyncbatch_cli_job(n, workdir)
    with out.open("rb") as handle:
        lines = sum(1 for _ in handle)
    if lines != n:
        raise RuntimeError(f"{lines} result lines for {n} requests")
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    args = parser.parse_args()
    measured: dict[int, dict[str, Measured]] = {}
    for n in args.sizes:
        input_file("openai", n)
        workdir = WORK / "memory" / str(n)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        measured[n] = cli_run(n, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"n={n}: " + ", ".join(f"{k} {m.peak_rss_mb:.0f} MB in {m.wall:.1f} s" for k, m in measured[n].items()),
              file=sys.stderr, flush=True)
    smallest = min(args.sizes)
    rows = []
    for n, commands in measured.items():
        for name, m in commands.items():
            rows.append([n, name, m.wall, m.cpu, m.peak_rss_mb, m.peak_rss_mb / measured[smallest][name].peak_rss_mb])
    print(table(rows, ["N", "command", "wall s", "CPU s", "peak RSS MB", f"RSS / RSS at {smallest}"]))
    print(f"raw figures: {save('memory', {str(n): c for n, c in measured.items()})}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
