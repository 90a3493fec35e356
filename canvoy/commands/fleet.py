"""``canvoy fleet status``: every device, online or offline and since when, from the broker."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich import box
from rich.live import Live
from rich.table import Table

from canvoy.certs import pki
from canvoy.commands.console import CommandConsole
from canvoy.commands.options import (
    add_broker,
    add_certs,
    add_identity,
    identity_files,
    parse_broker,
)
from canvoy.errors import ConfigError
from canvoy.fleet import QUIET_S, DeviceState, FleetWatch, watch
from canvoy.wire.tls import TlsFiles

EXAMPLE = """\
example:
  canvoy fleet status --certs pki --identity operator/alice --broker mqtt.example.com
  canvoy fleet status --certs pki --identity operator/alice --broker localhost:8883 --json
"""


def add_parser(sub: Any) -> None:
    """Register ``canvoy fleet`` and its subcommands."""
    parser = sub.add_parser("fleet", help="the fleet as a whole: status")
    fleet_sub = parser.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    status = fleet_sub.add_parser(
        "status",
        help="every device: online or offline and since when, version, outbox, overdue events",
        description="Reads every device's retained status message (its birth, heartbeats, "
        "goodbye or last will), verified against the fleet CA, and lists the devices. A device "
        "whose heartbeat is 3 intervals old is shown offline ('silent') even before the broker "
        "notices its dead link.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_certs(status)
    add_identity(status, "who connects (an operator identity of the PKI; one per person or tool)")
    add_broker(status, default="localhost")
    status.add_argument("--json", action="store_true", help="JSON for tools instead of a table")
    status.add_argument(
        "--watch", action="store_true", help="keep listening and refresh until Ctrl-C"
    )
    status.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="refresh every S s (--watch)"
    )
    status.add_argument(
        "--stale-after",
        type=float,
        metavar="S",
        help="offline when the newest status is older than S s "
        "(default: 3 of the device's heartbeat intervals)",
    )
    status.set_defaults(func=_status)


def _identity(args: argparse.Namespace) -> tuple[str, TlsFiles]:
    return identity_files(args.certs, args.identity, ("operator",))


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    ago = max(0.0, (now_ms - ms) / 1000)
    span = (
        f"{ago:.0f} s"
        if ago < 120
        else f"{ago / 60:.0f} min"
        if ago < 7200
        else (f"{ago / 3600:.1f} h")
    )
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ms / 1000))} ({span} ago)"


_CAUSE = {
    "connected": "online",
    "heartbeat": "online",
    "goodbye": "offline (stopped)",
    "lost": "offline (connection lost)",
    "silent": "offline (silent)",
}


def _table(states: list[DeviceState], rejected: int) -> Table:
    now = int(time.time() * 1000)
    online = sum(1 for s in states if s.online)
    table = Table(
        box=box.HEAVY_HEAD if sys.stdout.isatty() else box.SIMPLE,
        title=f"{len(states)} device(s), {online} online",
        title_justify="left",
        caption=f"{rejected} status message(s) failed verification" if rejected else None,
    )
    widest = max((len(s.device) for s in states), default=6)
    table.add_column("device", no_wrap=True, min_width=widest)
    table.add_column("state", no_wrap=True, min_width=len("offline (connection lost)"))
    for column in ("since", "last seen", "agent", "policy"):
        table.add_column(column, no_wrap=True)
    table.add_column("outbox", justify="right")
    table.add_column("overdue", justify="right")
    for s in states:
        state = _CAUSE[s.cause]
        table.add_row(
            s.device,
            f"[green]{state}[/]" if s.online else f"[red]{state}[/]",
            _when(s.since_ms, now),
            _when(s.last_seen_ms, now),
            s.agent,
            s.policy[:12],
            str(s.outbox),
            f"[red]{s.overdue}[/]" if s.overdue else "0",
        )
    return table


def _document(fleet: FleetWatch, states: list[DeviceState]) -> str:
    return json.dumps(
        {
            "generated_ms": int(time.time() * 1000),
            "devices": [s.as_json() for s in states],
            "rejected": list(fleet.rejected),
            "rejected_total": fleet.rejected_total,
        }
    )


def _status(args: argparse.Namespace) -> int:
    name, tls = _identity(args)
    host, port = parse_broker(args.broker)
    if args.interval <= 0 or (args.stale_after is not None and args.stale_after <= 0):
        raise ConfigError("--interval and --stale-after take a number of seconds > 0")
    crl = pki.crl_path(args.certs)
    fleet = FleetWatch(client_id=name, tls=tls, crl=crl if crl.exists() else None)
    fleet.connect(host, port)
    # Piped, the table keeps its natural width (no wrapping, no cut names) and plain lines.
    console = CommandConsole() if sys.stdout.isatty() else CommandConsole(width=1000, no_color=True)
    try:
        fleet.settle(QUIET_S)
        if not args.watch:
            states = fleet.states(stale_after_s=args.stale_after)
            if args.json:
                sys.stdout.write(_document(fleet, states) + "\n")
            else:
                console.print(_table(states, fleet.rejected_total))
            return 0
        if args.json:

            def lines(states: list[DeviceState]) -> None:
                sys.stdout.write(_document(fleet, states) + "\n")
                sys.stdout.flush()

            watch(fleet, args.interval, lines, args.stale_after)
        with Live(console=console, auto_refresh=False) as live:

            def refresh(states: list[DeviceState]) -> None:
                live.update(_table(states, fleet.rejected_total), refresh=True)

            watch(fleet, args.interval, refresh, args.stale_after)
    except KeyboardInterrupt:
        return 0
    finally:
        fleet.close()
    return 0
