"""``asyncbatch emulator``: serve the emulator until SIGINT/SIGTERM. Imports stay lazy (fast ``--help``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import EmulatorConfig
    from .server import Emulator

# option name -> EmulatorConfig field, for the knobs offered on the command line
_KNOBS: dict[str, tuple[str, type, str]] = {
    "seed": ("seed", int, "seed of every deterministic draw (outcomes, faults, output order)"),
    "validate_after": ("validate_after", float, "seconds an OpenAI batch stays 'validating'"),
    "complete_after": ("complete_after", float, "seconds from create to ended (0: ended at the first poll)"),
    "finalize_after": ("finalize_after", float, "seconds an OpenAI batch stays 'finalizing'"),
    "cancel_after": ("cancel_after", float, "seconds from a cancel request to cancelled/ended"),
    "fail_rate": ("fail_rate", float, "share of requests that fail inside the batch (status --fail-status)"),
    "fail_status": ("fail_status", int, "HTTP status of requests failed by --fail-rate"),
    "expire_rate": ("expire_rate", float, "share of requests that expire"),
    "fail_attempts": ("fail_attempts", int, "every request fails (HTTP 500) on its first K submissions"),
    "token_limit": ("token_limit", int, "estimated prompt tokens one OpenAI batch may enqueue"),
    "anthropic_404_after_create": ("anthropic_404_after_create", float,
                                   "seconds during which GET of a new Anthropic batch answers 404"),
}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser`` (its own parser, or the ``asyncbatch emulator`` subparser)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8750, help="port to bind, 0 for any free port (default 8750)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="where files are stored (default: a temporary directory removed at exit)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE.json",
                        help="a full EmulatorConfig as JSON; the options below override its fields")
    for option, (_, kind, text) in _KNOBS.items():
        parser.add_argument("--" + option.replace("_", "-"), type=kind, default=None, help=text)
    parser.add_argument("--api-key", action="append", dest="api_keys", default=None,
                        help="accept only this key (repeatable; default: any non-empty key)")
    parser.add_argument("--completion-window", action="append", dest="completion_windows", default=None,
                        help="allowed OpenAI completion_window (repeatable; default 24h), e.g. 7d")
    parser.add_argument("--expire-batch", action="append", type=int, dest="expire_batches", default=None,
                        metavar="N", help="the N-th batch created expires instead of completing (repeatable)")


def build_config(args: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig that ``args`` describe (the ``--config`` file, then the explicit options)."""
    import msgspec

    from .config import EmulatorConfig

    base: dict[str, Any] = {}
    if args.config is not None:
        base = msgspec.json.decode(args.config.read_bytes(), type=dict[str, Any])
    for option, (field, _, _) in _KNOBS.items():
        if getattr(args, option) is not None:
            base[field] = getattr(args, option)
    for field in ("api_keys", "completion_windows", "expire_batches"):
        if getattr(args, field) is not None:
            base[field] = getattr(args, field)
    return msgspec.convert(base, EmulatorConfig)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print the base URL on one line once ready. Exit status 0."""
    import signal

    import anyio
    import msgspec

    from .server import run_emulator

    try:
        config = build_config(args)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        print(f"asyncbatch emulator: bad configuration: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with run_emulator(config, host=args.host, port=args.port, data_dir=args.data_dir) as emu:
                print(emu.url, flush=True)
                print(exports(emu, any_key=config.api_keys is None), flush=True)
                async for _ in signals:
                    return

    try:
        anyio.run(serve)
    except OSError as exc:  # e.g. the port is taken
        print(f"asyncbatch emulator: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def exports(emu: Emulator, *, any_key: bool) -> str:
    """The shell lines that point the SDKs and asyncbatch at the emulator (the first line of output is its
    bare address, without the ``/v1`` the OpenAI clients need)."""
    lines = [f"export OPENAI_BASE_URL={emu.openai_base_url} ANTHROPIC_BASE_URL={emu.anthropic_base_url}"]
    if any_key:
        lines.append("export OPENAI_API_KEY=sk-emulator ANTHROPIC_API_KEY=sk-emulator  # any non-empty key works")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asyncbatch.emulator.cli", description=__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
