"""Parse the command line, run one subcommand, turn canvoy errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from canvoy import __version__
from canvoy.commands import COMMANDS
from canvoy.errors import CanvoyError

EXIT_ERROR = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="canvoy",
        description="Vehicle telemetry from the CAN bus to the cloud.",
    )
    parser.add_argument("--version", action="version", version=f"canvoy {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``canvoy``; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        code: int = args.func(args)
    except CanvoyError as exc:
        print(f"canvoy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback at -vv
        logging.getLogger("canvoy").debug("unexpected error", exc_info=True)
        print(
            f"canvoy {args.command}: unexpected error: {type(exc).__name__}: {exc} "
            "(run with -vv for the traceback, and please report it)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return code
