"""CLI start-up: wall time of ``asyncbatch --help`` (the engine's imports are lazy).

    .venv/bin/python benchmarks/startup.py --runs 20

Reports the median and the worst of ``--runs`` runs, after one warm-up run (bytecode cached).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from harness import PYTHON, run_child, save, table

ASYNCBATCH = str(Path(PYTHON).parent / "asyncbatch")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    run_child([ASYNCBATCH, "--help"])
    runs = [run_child([ASYNCBATCH, "--help"]) for _ in range(args.runs)]
    walls = [r.wall for r in runs]
    print(table([["asyncbatch --help", statistics.median(walls), max(walls), statistics.median(r.peak_rss_mb
                                                                                             for r in runs)]],
                ["command", "median wall s", "worst wall s", "peak RSS MB"]))
    print(f"raw figures: {save('startup', walls)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
