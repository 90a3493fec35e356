"""``canvoy broker``: run Mosquitto with the config and ACL written from the fleet PKI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from canvoy.broker.config import (
    DEFAULT_MAX_QUEUED_BYTES,
    DEFAULT_MAX_QUEUED_MESSAGES,
    BrokerSettings,
)
from canvoy.broker.process import data_dir_default, run_foreground
from canvoy.commands.options import DEFAULT_PORT, add_certs


def add_parser(sub: Any) -> None:
    """Register ``canvoy broker``."""
    parser = sub.add_parser(
        "broker",
        help="run Mosquitto with mutual TLS and per-device ACLs from the PKI",
        description="Runs in the foreground. SIGTERM stops it; SIGHUP rewrites the ACL from the "
        "PKI and reloads certificates and the CRL.",
        epilog="examples:\n  canvoy broker --certs fleet\n"
        "  canvoy broker --certs fleet --bind 0.0.0.0 --port 8883 --data /var/lib/canvoy-broker",
    )
    add_certs(parser)
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"TLS port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--data", type=Path, metavar="DIR", help="state directory (default CERTS/broker-data)"
    )
    parser.add_argument(
        "--max-queued-messages",
        type=int,
        default=DEFAULT_MAX_QUEUED_MESSAGES,
        metavar="N",
        help="messages queued per offline or slow client (0: no limit; "
        f"default {DEFAULT_MAX_QUEUED_MESSAGES:,})",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=int,
        default=DEFAULT_MAX_QUEUED_BYTES,
        metavar="N",
        help=f"the same bound in bytes (0: no limit; default {DEFAULT_MAX_QUEUED_BYTES:,})",
    )
    parser.add_argument(
        "--autosave-changes",
        type=int,
        default=1,
        metavar="N",
        help="save the persistence file after this many changes (default 1, the most durable; "
        "see docs/CONFIG.md for its cost while messages queue)",
    )
    parser.set_defaults(func=_run, service=True)


def _run(args: argparse.Namespace) -> int:
    settings = BrokerSettings(
        certs=args.certs,
        port=args.port,
        bind=args.bind,
        data=args.data or data_dir_default(args.certs),
        max_queued_messages=args.max_queued_messages,
        max_queued_bytes=args.max_queued_bytes,
        autosave_changes=args.autosave_changes,
    )
    return run_foreground(settings)
