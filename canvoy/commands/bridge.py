"""``canvoy bridge``: write a config (init), run a bridge (run), resend dead letters (redeliver)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from canvoy.bridge.config import load_config
from canvoy.bridge.service import Bridge
from canvoy.certs import pki
from canvoy.certs.health import log_crl_freshness
from canvoy.commands.agent import parse_broker
from canvoy.config import build
from canvoy.errors import ConfigError
from canvoy.signals import reload_on_hangup, stop_on_signals
from canvoy.wire.ids import check_id

TEMPLATE = """\
# canvoy bridge config; every key is described in docs/CONFIG.md.
# Relative paths are relative to this file.

# Bridge identity: the certificate's CN and the MQTT client id (one per process).
name: {name}
tls:
  ca: {ca}
  cert: {cert}
  key: {key}
crl: {crl}                  # revoked devices are rejected
known_devices: null         # a directory of device certificates to trust before their births

broker:
  host: {host}
  port: {port}

group: canvoy               # bridges in one group share the fleet ($share/<group>/...)
session_expiry_s: 86400     # the broker keeps messages for a restarting bridge this long
receive_maximum: 1000       # unacknowledged messages the broker may send at once
hold_unknown_s: 10.0        # hold envelopes of a device whose birth has not arrived yet
replay_window: 100000       # sequence numbers per device and boot remembered for replays
quarantine: {quarantine}
status_file: null
receipts: true              # publish delivery receipts for events to canvoy/v1/<device>/receipts

# Prometheus metrics at http://127.0.0.1:9732/metrics (docs/OPERATIONS.md); off unless enabled.
metrics:
  enabled: false
  host: 127.0.0.1
  port: 9732

sinks:
{sinks}
routes:
{routes}
# Which diagnostic codes (globs) become service tickets on the 'tickets' route.
service_rules:
  - {{match: "P0217", severity: high, title: "Engine overheating",
     action: "Stop the vehicle safely; check coolant level, fan and thermostat before driving on"}}
  - {{match: "P056*", severity: medium, title: "Battery or charging voltage",
     action: "Test the 12 V battery and alternator at the next service"}}
  - {{match: "*", severity: low, title: "", action: "Read the fault memory at the next service"}}
"""


def add_parser(sub: Any) -> None:
    """Register ``canvoy bridge`` and its subcommands."""
    parser = sub.add_parser("bridge", help="the cloud bridge: init, run, redeliver")
    bridge_sub = parser.add_subparsers(dest="bridge_command", required=True, metavar="ACTION")

    init = bridge_sub.add_parser("init", help="write a complete, commented bridge config")
    init.add_argument("--certs", type=Path, required=True, help="fleet PKI directory")
    init.add_argument("--identity", required=True, metavar="bridge/NAME")
    init.add_argument("--broker", required=True, metavar="HOST:PORT")
    init.add_argument("--jsonl", type=Path, metavar="PATH", help="append records to a file")
    init.add_argument("--webhook", metavar="URL", help="POST events to a service desk")
    init.add_argument("--webhook-secret-file", type=Path, metavar="FILE")
    init.add_argument("--nats", metavar="URL", help="publish to NATS JetStream")
    init.add_argument("--no-fleet", action="store_true", help="no republish to fleet/v1/...")
    init.add_argument("-o", "--output", type=Path, required=True)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_init)

    run = bridge_sub.add_parser("run", help="run the bridge until SIGTERM")
    run.add_argument("--config", type=Path, required=True)
    run.set_defaults(func=_run)

    again = bridge_sub.add_parser("redeliver", help="POST the webhook dead letters again")
    again.add_argument("--config", type=Path, required=True)
    again.set_defaults(func=_redeliver)


def _q(path: Path) -> str:
    return json.dumps(str(path.resolve()))


def _init(args: argparse.Namespace) -> int:
    kind, _, name = args.identity.partition("/")
    if kind != "bridge" or not name:
        raise ConfigError(f"--identity {args.identity!r} must be bridge/NAME")
    check_id(name)
    host, port = parse_broker(args.broker)
    folder = pki.require_identity(args.certs, "bridge", name)
    if args.output.exists() and not args.force:
        raise ConfigError(f"{args.output} exists: pass --force to overwrite it")
    if bool(args.webhook) != bool(args.webhook_secret_file):
        raise ConfigError("--webhook and --webhook-secret-file go together")
    out_dir = args.output.resolve().parent
    sinks: list[str] = []
    telemetry: list[str] = []
    events: list[str] = []
    tickets: list[str] = []
    if args.jsonl:
        sinks.append(
            f"  files:\n    type: jsonl\n    path: {_q(args.jsonl)}\n"
            "    max_bytes: 104857600     # rotate at 100 MiB\n    keep: 5\n"
        )
        telemetry.append("files")
        events.append("files")
    if args.webhook:
        sinks.append(
            f"  desk:\n    type: webhook\n    url: {json.dumps(args.webhook)}\n"
            f"    secret_file: {_q(args.webhook_secret_file)}\n"
            f"    dead_letter: {_q(out_dir / 'dead-letter')}\n"
            "    max_elapsed_s: 300.0       # then the dead-letter directory\n"
        )
        tickets.append("desk")
    if not args.no_fleet:
        sinks.append("  fleet:\n    type: mqtt              # fleet/v1/<device>/<kind>\n")
        telemetry.append("fleet")
        events.append("fleet")
    if args.nats:
        sinks.append(
            f"  stream:\n    type: nats\n    url: {json.dumps(args.nats)}\n    stream: CANVOY\n"
        )
        telemetry.append("stream")
        events.append("stream")
    routes = (
        f"  telemetry: [{', '.join(telemetry)}]\n  events: [{', '.join(events)}]\n"
        f"  tickets: [{', '.join(tickets)}]              # service orders for the desk"
    )
    crl = args.certs / "crl.pem"
    text = TEMPLATE.format(
        name=name,
        ca=_q(args.certs / "ca.pem"),
        cert=_q(folder / "cert.pem"),
        key=_q(folder / "key.pem"),
        crl=_q(crl) if crl.exists() else "null",
        host=host,
        port=port,
        quarantine=_q(out_dir / "quarantine.jsonl"),
        sinks="".join(sinks) or "  {}\n",
        routes=routes,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.webhook and not args.webhook_secret_file.exists():
        _write_secret(args.webhook_secret_file)
    args.output.write_text(text)
    load_config(args.output)
    print(f"wrote {args.output}; run it with: canvoy bridge run --config {args.output}")
    return 0


def _write_secret(path: Path) -> None:
    """A new Standard Webhooks secret, readable by its owner only; the desk gets a copy."""
    from canvoy.bridge.sinks.webhook import new_secret

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_secret() + "\n")
    print(f"wrote a new webhook secret to {path}: give the service desk a copy to verify with")


def _run(args: argparse.Namespace) -> int:
    # Signals during start-up (reading files, spawning workers) are kept, not fatal.
    stopping, hangup = threading.Event(), threading.Event()
    stop_on_signals(stopping.set)
    reload_on_hangup(hangup.set)
    config = load_config(args.config)
    _check_crl(config.crl)
    bridge = Bridge(config)
    stop_on_signals(bridge.stop)
    reload_on_hangup(bridge.reload)  # after a revocation, as for the broker
    if stopping.is_set():
        bridge.stop()
    if hangup.is_set():
        bridge.reload()
    return bridge.run()


def _check_crl(crl: Path | None) -> None:
    """At start: warn when the CRL nears its next update, log an error after it (the broker
    then refuses every client, this bridge included)."""
    if crl is not None:
        log_crl_freshness(crl, logging.getLogger("canvoy.bridge"))


def _redeliver(args: argparse.Namespace) -> int:
    try:
        from canvoy.bridge.sinks.webhook import WebhookConfig, WebhookSink
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"redelivering webhooks needs {exc.name!r}: pip install 'canvoy[bridge]'"
        ) from exc

    config = load_config(args.config)
    webhooks = {n: o for n, o in config.sinks.items() if o.get("type") == "webhook"}
    if not webhooks:
        raise ConfigError(f"{args.config} has no webhook sink")
    failed_total = 0
    for name, options in webhooks.items():
        rest = {k: v for k, v in options.items() if k != "type"}
        sink = WebhookSink(name, build(WebhookConfig, rest, f"sinks.{name}"))
        done, failed = sink.redeliver()
        sink.close()
        print(f"{name}: {done} delivered, {failed} still failing")
        failed_total += failed
    return 1 if failed_total else 0
