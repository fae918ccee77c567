"""The ``asyncbatch`` command line. Imports are lazy so that ``asyncbatch --help`` starts fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asyncbatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulator = sub.add_parser("emulator", help="run the local emulator of the provider batch APIs")
    from .emulator import cli as emulator_cli

    emulator_cli.configure_parser(emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "emulator":
        from .emulator import cli as emulator_cli

        return emulator_cli.run(args)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
