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
from canvoy.commands.options import add_broker, add_certs, add_config, config_path, parse_broker
from canvoy.config import build
from canvoy.errors import ConfigError
from canvoy.signals import reload_on_hangup, stop_on_signals
from canvoy.wire.ids import check_id

TEMPLATE = """\
# canvoy bridge config, written by 'canvoy bridge init': every key with its value, and what it
# does; docs/CONFIG.md describes each. Relative paths are relative to this file's folder
# (paths under it are written that way, so the folder can move); absolute paths stay as they are.
# Run it with: canvoy bridge run --config {config}

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
  keepalive_s: 30

group: canvoy               # bridges in one group share the fleet ($share/<group>/...)
session_expiry_s: 86400     # the broker keeps messages for a restarting bridge this long
receive_maximum: 1000       # unacknowledged messages the broker may send at once
hold_unknown_s: 10.0        # hold envelopes of a device whose birth has not arrived yet
replay_window: 100000       # sequence numbers per device and boot remembered for replays
batch_max: 500              # messages verified and spooled per transaction (one fsync)
batch_max_bytes: 1048576    # payload bytes per batch at most
verify_workers: null        # verifying processes; null: one per core (at most 4), 0: none
quarantine: {quarantine}    # rejected messages (JSON Lines); the state file lives beside it
status_file: null           # a JSON file with the counters, rewritten every 10 s
receipts: true              # name events in the confirmations (devices' delivery receipts)
confirm_interval_s: 1.0     # confirmations to one device at most this often (ranges per boot)

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
    parser = sub.add_parser(
        "bridge",
        help="the cloud bridge: init, run, redeliver",
        description="Write a bridge config, run a bridge, or resend webhook dead letters.",
        epilog="example:\n  canvoy bridge init --certs fleet --identity bridge/b1 "
        "--broker mq.example.com --jsonl records.jsonl -o bridge.yaml\n"
        "  canvoy bridge run --config bridge.yaml",
    )
    bridge_sub = parser.add_subparsers(dest="bridge_command", required=True, metavar="ACTION")

    init = bridge_sub.add_parser(
        "init",
        help="write a complete, commented bridge config",
        description="Writes every key of the bridge config with its value and a comment, and "
        "checks that it loads. The sinks are the ones named here; routes send telemetry and "
        "events to each, tickets to the webhook.",
        epilog="examples:\n"
        "  canvoy bridge init --certs fleet --identity bridge/b1 --broker localhost \\\n"
        "      --jsonl /var/lib/canvoy/records.jsonl -o bridge.yaml\n"
        "  canvoy bridge init --certs fleet --identity bridge/b1 --broker mq.example.com:8883 "
        "\\\n      --webhook https://desk.example.com/hooks/canvoy "
        "--webhook-secret-file desk.secret -o bridge.yaml",
    )
    add_certs(init)
    init.add_argument(
        "--identity",
        required=True,
        metavar="bridge/NAME",
        help="the bridge's identity in the PKI ('canvoy certs issue bridge NAME')",
    )
    add_broker(init)
    init.add_argument("--jsonl", type=Path, metavar="PATH", help="append records to a file")
    init.add_argument("--webhook", metavar="URL", help="POST events to a service desk")
    init.add_argument(
        "--webhook-secret-file",
        type=Path,
        metavar="FILE",
        help="the webhook's Standard Webhooks secret (made, mode 0600, when it does not exist)",
    )
    init.add_argument("--nats", metavar="URL", help="publish to NATS JetStream")
    init.add_argument("--no-fleet", action="store_true", help="no republish to fleet/v1/...")
    init.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the config to write"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_init)

    run = bridge_sub.add_parser(
        "run",
        help="run the bridge until SIGTERM",
        description="Verifies and forwards until SIGTERM or Ctrl-C; SIGHUP reloads the CRL.",
        epilog="example:\n  canvoy bridge run --config bridge.yaml --log-format json",
    )
    add_config(run, "bridge")
    run.set_defaults(func=_run, service=True)

    again = bridge_sub.add_parser(
        "redeliver",
        help="POST the webhook dead letters again",
        description="Exit 0 when every dead letter was delivered, 1 while some still fail.",
        epilog="example:\n  canvoy bridge redeliver --config bridge.yaml",
    )
    add_config(again, "bridge")
    again.set_defaults(func=_redeliver)


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

    def _q(path: Path) -> str:
        return config_path(path, args.output)

    sinks: list[str] = []
    telemetry: list[str] = []
    events: list[str] = []
    tickets: list[str] = []
    if args.jsonl:
        sinks.append(
            f"  files:\n    type: jsonl\n    path: {_q(args.jsonl)}\n"
            "    max_bytes: 104857600     # rotate at 100 MiB\n"
            "    keep: 5                  # rotated files kept\n"
        )
        telemetry.append("files")
        events.append("files")
    if args.webhook:
        sinks.append(
            f"  desk:\n    type: webhook\n    url: {json.dumps(args.webhook)}\n"
            f"    secret_file: {_q(args.webhook_secret_file)}\n"
            f"    dead_letter: {_q(out_dir / 'dead-letter')}\n"
            "    timeout_s: 10.0            # one request\n"
            "    max_elapsed_s: 300.0       # then the dead-letter directory\n"
            "    retry_min_s: 0.5           # back-off between retries, with jitter\n"
            "    retry_max_s: 30.0\n"
        )
        tickets.append("desk")
    if not args.no_fleet:
        sinks.append(
            "  fleet:\n    type: mqtt              # fleet/v1/<device>/<kind>\n"
            "    timeout_s: 10.0         # wait for the broker's PUBACK\n"
            "    max_payload_bytes: 131072   # larger telemetry records go out in parts\n"
        )
        telemetry.append("fleet")
        events.append("fleet")
    if args.nats:
        sinks.append(
            f"  stream:\n    type: nats\n    url: {json.dumps(args.nats)}\n"
            "    stream: CANVOY              # created when missing\n"
            "    subject_prefix: canvoy      # subjects <prefix>.<kind>.<device>\n"
            "    duplicate_window_s: 86400.0 # JetStream drops a redelivered record this long\n"
            "    replicas: 1                 # copies of a stream it creates (3 on a cluster)\n"
            "    timeout_s: 10.0             # wait for a connection or a publish acknowledgement\n"
            "    reconnect_wait_s: 1.0       # pause before trying the next server\n"
        )
        telemetry.append("stream")
        events.append("stream")
    routes = (
        f"  telemetry: [{', '.join(telemetry)}]\n  events: [{', '.join(events)}]\n"
        f"  tickets: [{', '.join(tickets)}]              # service orders for the desk"
    )
    crl = args.certs / "crl.pem"
    text = TEMPLATE.format(
        config=args.output,
        name=name,
        ca=_q(args.certs / "ca.pem"),
        cert=_q(folder / "cert.pem"),
        key=_q(folder / "key.pem"),
        crl=_q(crl) if crl.exists() else "null",
        host=json.dumps(host),
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
