"""``canvoy demo``: broker, bridge and agent on a recorded overheat drive, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from canvoy.commands.console import CommandConsole
from canvoy.demo import run_demo


def add_parser(sub: Any) -> None:
    """Register ``canvoy demo``."""
    parser = sub.add_parser(
        "demo",
        help="run the whole chain locally: a fault becomes a service-desk event",
        description="Starts a broker, a bridge and an agent on 127.0.0.1 and replays a recorded "
        "overheat drive until its fault reaches a local service desk.",
        epilog="example:\n  canvoy demo --workdir /tmp/canvoy-demo",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("demo-run"),
        help="where the demo writes everything: a new or empty folder, or an earlier "
        "demo's, which is replaced (default: demo-run)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.workdir, CommandConsole(highlight=False, soft_wrap=True))
