"""``canvoy tail``: follow the fleet as an operator, verifying every envelope like the bridge."""

from __future__ import annotations

import argparse
import fnmatch
import json
import queue
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from canvoy.agent.database import load_databases
from canvoy.bridge.records import Record, records
from canvoy.bridge.verify import Verifier
from canvoy.commands.console import CommandConsole
from canvoy.commands.options import (
    add_broker,
    add_certs,
    add_identity,
    identity_files,
    parse_broker,
)
from canvoy.commands.values import resolutions, text
from canvoy.errors import ConnectionLostError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire.errors import EnvelopeError
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.tls import TlsFiles
from canvoy.wire.topics import PREFIX


def add_parser(sub: Any) -> None:
    """Register ``canvoy tail``."""
    parser = sub.add_parser(
        "tail",
        help="follow devices' messages live, verified against the fleet CA",
        description="Subscribes as an operator, verifies each envelope (certificate, signature, "
        "body) and prints it. Keys are learned from the devices' retained birth messages. "
        "Values are printed at their signal's resolution (the scale's decimals with --dbc, "
        "else 15 significant digits); lines are not wrapped when the output is not a terminal.",
        epilog="examples:\n"
        "  canvoy tail --certs fleet --identity operator/ops --broker mq.example.com\n"
        "  canvoy tail --certs fleet --identity operator/ops --device 'car-*' "
        "--signal '*/INSTRUMENT/*' --dbc car.dbc\n"
        "  canvoy tail --certs fleet --identity operator/ops --kind events --json | jq .",
    )
    add_certs(parser)
    add_identity(
        parser, "who follows ('canvoy certs issue operator NAME'); one identity per running tool"
    )
    add_broker(parser, default="localhost")
    parser.add_argument(
        "--device", default="*", metavar="GLOB", help="only these devices (default: all)"
    )
    parser.add_argument(
        "--kind",
        choices=("telemetry", "events", "status"),
        help="only this kind of message (default: telemetry and events)",
    )
    parser.add_argument(
        "--signal", metavar="GLOB", help="only these telemetry series (bus/message/signal)"
    )
    parser.add_argument(
        "--dbc",
        type=Path,
        action="append",
        metavar="FILE",
        help="databases whose scales give each value's decimals (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of a live view")
    parser.add_argument("--count", type=int, metavar="N", help="exit after this many messages")
    parser.set_defaults(func=_run)


def _identity(args: argparse.Namespace) -> tuple[str, TlsFiles]:
    return identity_files(args.certs, args.identity, ("operator", "bridge"))


def output_console() -> Console:
    """The console for records: a terminal wraps at its width; a pipe or file gets whole lines
    (a reader such as grep or a log file must see one record per line)."""
    return CommandConsole(soft_wrap=not sys.stdout.isatty(), highlight=False)


def series_places(key: str, places: dict[str, int | None]) -> int | None:
    """The decimals of series ``bus/message/signal`` from ``MESSAGE.Signal`` resolutions."""
    _bus, _, rest = key.partition("/")
    return places.get(rest.replace("/", ".", 1))


def show(
    console: Console, record: Record, signal_glob: str | None, places: dict[str, int | None]
) -> None:
    """One readable line per telemetry series, event or status."""
    d = record.data
    head = f"[bold]{escape(record.device)}[/] {record.kind} #{d['seq']}"
    if record.kind == "telemetry":
        for key, series in d["series"].items():
            if signal_glob and not fnmatch.fnmatchcase(key, signal_glob):
                continue
            value = text(series["v"][-1], series_places(key, places))
            console.print(f"{head} {escape(key)} = {escape(value)}  ({len(series['v'])} samples)")
    elif record.kind == "events":
        console.print(f"{head} [red]{escape(json.dumps(d['event']))}[/]")
    else:
        console.print(
            f"{head} {escape(str(d['state']))} agent {escape(str(d['agent']))} "
            f"outbox {escape(str(d['outbox']))}"
        )


def _closed_reason(conn: Connection, identity: str) -> str:
    reason = conn.closed.result()
    text = f"stopped following: the broker closed the connection: {reason}"
    if "taken over" in reason.lower():
        return text
    # Mosquitto 2.0 often closes a taken-over connection before its DISCONNECT (0x8E) is sent.
    return (
        f"{text}. If another tool or person connected as {identity}, it took over this "
        "session: give each an identity of their own ('canvoy certs issue operator NAME')"
    )


def _next(inbox: queue.Queue[Message], conn: Connection, identity: str) -> Message:
    """The next message; when the connection ends first (another connection of the same
    identity took the session, or the broker went away), say so instead of going quiet.

    Raises:
        ConnectionLostError: the connection closed; the message carries the broker's reason.
    """
    while True:
        try:
            return inbox.get(timeout=0.5)
        except queue.Empty:
            if conn.closed.done():
                raise ConnectionLostError(_closed_reason(conn, identity)) from None


def _run(args: argparse.Namespace) -> int:
    name, tls = _identity(args)
    host, port = parse_broker(args.broker)
    crl = args.certs / "crl.pem"
    keys = DeviceKeys(tls.ca.read_bytes(), crl.read_bytes() if crl.exists() else None)
    verifier = Verifier(keys)
    inbox: queue.Queue[Message] = queue.Queue()
    conn = Connection(client_id=name, tls=tls.context(), on_message=inbox.put)
    conn.connect(host, port)
    kinds = [args.kind] if args.kind else ["telemetry", "events"]
    topics = [(f"{PREFIX}/+/status", 1)] + [(f"{PREFIX}/+/{k}", 1) for k in kinds if k != "status"]
    conn.subscribe(topics)
    places = resolutions(load_databases(args.dbc)) if args.dbc else {}
    console = output_console()
    err = Console(stderr=True, soft_wrap=True)
    err.print(f"following {', '.join(t for t, _q in topics)} on {host}:{port} (Ctrl-C to stop)")
    shown = 0
    try:
        while args.count is None or shown < args.count:
            msg = _next(inbox, conn, args.identity)
            device, kind = msg.topic.split("/")[2], msg.topic.split("/")[3]
            try:
                verified = verifier.check(msg.topic, bytes(msg.payload), admit=False)
            except EnvelopeError as exc:
                err.print(f"[yellow]rejected[/] {escape(f'{msg.topic}: {exc.reason}: {exc}')}")
                continue
            if not fnmatch.fnmatchcase(device, args.device):
                continue
            if kind == "status" and args.kind != "status":
                continue  # births teach keys; show them only when asked
            for record in records(verified):
                if args.json:
                    sys.stdout.write(record.json() + "\n")
                    sys.stdout.flush()
                else:
                    show(console, record, args.signal, places)
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()
    return 0
