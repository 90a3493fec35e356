"""Parse the command line, run one subcommand, turn canvoy errors into one-line messages.

Exit codes: 0 done, 1 a runtime failure (a broker, a disk, a sink, a failed check), 2 a usage or
configuration error (argparse's own, and every ``canvoy.errors.UsageError``), 130 interrupted.
A reader of stdout that goes away (``canvoy certs list --json | head``) ends canvoy quietly with 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from canvoy import __version__
from canvoy.commands import COMMANDS
from canvoy.errors import CanvoyError, UsageError
from canvoy.logs import LEVELS, LogFormat, configure, level_for

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EPILOG = """\
examples:
  canvoy demo
  canvoy decode --dbc car.dbc drive.blf --format table
  candump -L can0 | canvoy decode --dbc car.dbc -
  canvoy agent status --config agent.yaml -v

exit codes: 0 done, 1 runtime failure, 2 usage or configuration error, 130 interrupted.
-v, -q, --log-level and --log-format work before or after the subcommand."""


class CanvoyParser(argparse.ArgumentParser):
    """An ArgumentParser whose every level takes the logging options, so that they may follow
    the subcommand (``canvoy agent status --config a.yaml -v``); epilogs keep their lines."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        logs = self.add_argument_group("logging (before or after the subcommand)")
        # SUPPRESS: a level that is not given leaves what an outer level parsed untouched.
        logs.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="more log output, one level a -v (up to debug)",
        )
        logs.add_argument(
            "-q",
            "--quiet",
            action="count",
            default=argparse.SUPPRESS,
            help="less log output, one level a -q (down to errors only)",
        )
        logs.add_argument(
            "--log-level",
            type=str.lower,
            choices=LEVELS,
            default=argparse.SUPPRESS,
            help="the log level; overrides -v and -q (default: info for agent run, bridge run and "
            "broker; warning for the other commands)",
        )
        logs.add_argument(
            "--log-format",
            choices=("text", "json"),
            default=argparse.SUPPRESS,
            help="json: one object per line (time, level, logger, message, exception), "
            "for journald and log collectors (default: text)",
        )


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = CanvoyParser(
        prog="canvoy",
        description="Vehicle telemetry from the CAN bus to the cloud.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"canvoy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def exit_code(exc: CanvoyError) -> int:
    """2 for what the user must change (usage, config, a named file), 1 for a runtime failure."""
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``canvoy``; return the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    log_format: LogFormat = getattr(args, "log_format", "text")
    configure(
        level_for(
            getattr(args, "verbose", 0),
            getattr(args, "quiet", 0),
            getattr(args, "log_level", None),
            service=getattr(args, "service", False),
        ),
        log_format,
    )
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is still ours to handle
    except CanvoyError as exc:
        _fail(f"canvoy {args.command}: error: {exc}", json_logs=log_format == "json")
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as Unix tools do
        _drop_stdout()
        return EXIT_OK  # what was written was read as far as the reader wanted
    except Exception as exc:  # a bug: one line for the user, the traceback at -vv
        logging.getLogger("canvoy").debug("unexpected error", exc_info=True)
        _fail(
            f"canvoy {args.command}: unexpected error: {type(exc).__name__}: {exc} "
            "(run with -vv for the traceback, and please report it)",
            json_logs=log_format == "json",
        )
        return EXIT_FAILURE
    return code


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered for the closed pipe does not fail again on the way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _fail(line: str, *, json_logs: bool) -> None:
    """The one line that says why canvoy stops: a JSON log record when the logs are JSON (a
    collector reading stderr then sees only JSON), else plain text."""
    if json_logs:
        logging.getLogger("canvoy").error(line)
    else:
        print(line, file=sys.stderr)
