"""``canvoy agent``: write a config (init), run the agent (run), and show its outbox (status)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from canvoy.agent.config import load_config
from canvoy.agent.outbox import EventStatus, open_status
from canvoy.agent.policy import load_policy
from canvoy.agent.service import Agent, status_path
from canvoy.agent.source import parse_speed
from canvoy.certs import pki
from canvoy.errors import ConfigError
from canvoy.signals import stop_on_signals
from canvoy.wire.ids import check_id

CONFIG_TEMPLATE = """\
# canvoy agent config; every key is described in docs/CONFIG.md.
# Relative paths are relative to this file.

# Device id: the certificate's CN, the MQTT client id and the topic segment.
device: {device}

# The fleet CA and this device's certificate and key (made by 'canvoy certs').
tls:
  ca: {ca}
  cert: {cert}
  key: {key}

# Frame sources: a live python-can interface (interface + channel) or a log to replay.
buses:
  - name: {bus_name}
    databases: [{dbc}]
{source}
# The collection policy (docs/POLICY.md); null collects every signal but counters/checksums.
policy: {policy}

# When a telemetry batch is closed: whichever comes first.
batch:
  max_interval_s: 1.0
  max_samples: 20000
  max_bytes: 98304          # uncompressed estimate; the signed envelope stays <= 128 KiB

# The durable store every envelope is committed to before it is sent.
outbox:
  path: {outbox}
  sync: full                # full: a power cut loses nothing committed; normal: see docs/CONFIG.md
  max_bytes: 268435456      # 256 MiB; when full, the oldest telemetry is evicted first

# The broker (mutual TLS, MQTT 5). Limits default to AWS IoT Core's per-connection limits.
mqtt:
  host: {host}
  port: {port}
  keepalive_s: 30
  max_inflight: 20
  max_publishes_per_s: 100
  max_bytes_per_s: 524288
  reconnect_min_s: 1.0
  reconnect_max_s: 60.0

# When an envelope may leave the outbox. bridge: once a bridge confirms that its sinks took it
# (survives broker crashes and restarts; the outbox also holds what no bridge has confirmed
# yet). broker: at the broker's PUBACK (only for a broker that is durable on its own).
delivery:
  mode: bridge
  confirm_timeout_s: 30.0   # published again, byte for byte, if not confirmed by then
  republish_max_s: 900.0    # each republish waits twice as long as the last, up to this

# Diagnostics from decoded signals (docs/CONFIG.md): DTCs broadcast in a DBC message, and
# threshold triggers with a hold time and a freeze frame. J1939 buses also report DM1 codes.
diagnostics:
  dtc_signals: ["*/DIAG_DTC/Dtc[0-9]*"]
  odometer: "*/INSTRUMENT/Odometer"
  receipt_deadline_s: 300.0 # an event a bridge has not confirmed by then is shown as overdue
  triggers: []
  # - name: coolant_overtemp
  #   when: "CoolantTemp > 112 for 5 s"
  #   freeze_frame: [CoolantTemp, EngineSpeed, VehicleSpeed, CoolantFanDuty]
  #   before_s: 10
  #   after_s: 5

# On SIGTERM: how long to wait for acknowledgements of what is still in flight.
shutdown_timeout_s: 10.0
"""


def add_parser(sub: Any) -> None:
    """Register ``canvoy agent`` and its subcommands."""
    parser = sub.add_parser("agent", help="the in-vehicle agent: init, run, status")
    agent_sub = parser.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    init = agent_sub.add_parser("init", help="write a complete, commented agent config")
    init.add_argument("--device", required=True, help="device id (its certificate CN)")
    init.add_argument("--certs", type=Path, required=True, help="fleet PKI directory")
    init.add_argument(
        "--key", type=Path, help="the device key, when it is not in the PKI (certs request)"
    )
    init.add_argument("--cert", type=Path, help="the device certificate that goes with --key")
    init.add_argument("--broker", required=True, metavar="HOST:PORT")
    init.add_argument("--dbc", type=Path, required=True, action="append", help="repeatable")
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--replay", type=Path, metavar="LOGFILE", help="replay a CAN log")
    source.add_argument("--bus", metavar="INTERFACE:CHANNEL", help="e.g. socketcan:can0")
    init.add_argument("--speed", default="max", help="replay pace: max, realtime or xN")
    init.add_argument("--loop", action="store_true", help="replay the log again and again")
    init.add_argument("--policy", type=Path, help="collection policy file")
    init.add_argument("--outbox", type=Path, default=Path("canvoy-outbox.sqlite"))
    init.add_argument("-o", "--output", type=Path, required=True)
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_init)

    run = agent_sub.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once every replayed log has ended and the outbox is acknowledged",
    )
    run.set_defaults(func=_run)

    status = agent_sub.add_parser("status", help="outbox depth, age, evictions, rejections")
    status.add_argument("--config", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def parse_broker(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT``.

    Raises:
        ConfigError: not HOST:PORT with a port 1..65535.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--broker {text!r} must be HOST:PORT, e.g. localhost:8883")
    return host, int(port)


def _quote(path: Path) -> str:
    return json.dumps(str(path.resolve()))


def _init(args: argparse.Namespace) -> int:
    device = check_id(args.device)
    host, port = parse_broker(args.broker)
    cert_path, key_path = _device_files(args, device)
    if args.output.exists() and not args.force:
        raise ConfigError(f"{args.output} exists: pass --force to overwrite it")
    if args.replay is not None:
        parse_speed(args.speed)
        source = (
            f"    replay: {_quote(args.replay)}\n    speed: {args.speed}       "
            f"# max, realtime or xN\n    loop: {str(args.loop).lower()}\n"
        )
    else:
        interface, _, channel = args.bus.partition(":")
        if not interface or not channel:
            raise ConfigError(f"--bus {args.bus!r} must be INTERFACE:CHANNEL, e.g. socketcan:can0")
        source = f"    interface: {interface}\n    channel: {channel}\n"
    text = CONFIG_TEMPLATE.format(
        device=device,
        ca=_quote(args.certs / "ca.pem"),
        cert=_quote(cert_path),
        key=_quote(key_path),
        bus_name="can0",
        dbc=", ".join(_quote(d) for d in args.dbc),
        source=source,
        policy=_quote(args.policy) if args.policy else "null",
        outbox=_quote(args.outbox),
        host=host,
        port=port,
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    load_policy(load_config(args.output).policy)  # what we wrote must run as is
    print(f"wrote {args.output}; run it with: canvoy agent run --config {args.output}")
    return 0


def _device_files(args: argparse.Namespace, device: str) -> tuple[Path, Path]:
    """The certificate and key: from the PKI, or (enrolled by request) from --cert/--key.

    Raises:
        ConfigError: only one of --cert/--key, or a file is missing.
        PKIError: the PKI has no such device.
    """
    if args.key is None and args.cert is None:
        folder = pki.require_identity(args.certs, "device", device)
        return folder / "cert.pem", folder / "key.pem"
    if args.key is None or args.cert is None:
        raise ConfigError("--key and --cert go together: the device's key and its certificate")
    for path in (pki.ca_cert_path(args.certs), args.cert, args.key):
        if not path.is_file():
            raise ConfigError(f"{path} does not exist")
    return args.cert, args.key


def _run(args: argparse.Namespace) -> int:
    agent = Agent(load_config(args.config))
    stop_on_signals(agent.stop)
    return agent.run(exit_when_done=args.exit_when_done)


def _age(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    return f"{(now_ms - ms) / 1000:.1f} s ago"


def _clock(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _event_state(e: EventStatus, now: int, deadline_ms: float, error: str | None) -> str:
    if e.delivered_ms is not None:
        return f"delivered at {_clock(e.delivered_ms)}"
    text = f"pending since {_clock(e.created_ms)}"
    if now - e.created_ms <= deadline_ms:
        return text
    if e.acked_ms is None:
        reason = "not yet accepted by the broker" + (f": {error}" if error else "")
    else:
        reason = f"accepted by the broker at {_clock(e.acked_ms)}, no bridge receipt yet"
    return f"{text}, OVERDUE ({reason})"


def _ingest_lines(live: dict[str, Any]) -> list[str]:
    """What the last run dropped or skipped before the outbox (from its live status file)."""
    sealer = live.get("sealer")
    if not isinstance(sealer, dict):
        return []
    skipped = sum(int(b.get("listener_errors", 0)) for b in live.get("buses", {}).values())
    return [
        "ingest",
        f"  dropped         {sealer.get('dropped_samples', 0)} sample(s), "
        f"{sealer.get('dropped_events', 0)} event envelope(s) (the sealing queue was full)",
        f"  queued          {sealer.get('queued_samples', 0)} sample(s) now, "
        f"peak {sealer.get('peak_samples', 0)}",
        f"  skipped frames  {skipped} (failed in decoding, policy or diagnostics; see the log)",
        f"  sealing errors  {sealer.get('errors', 0)}",
    ]


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    outbox = open_status(config.outbox.path)
    live_path = status_path(config.outbox.path)
    live: dict[str, Any] = {}
    if live_path.exists():
        try:
            live = json.loads(live_path.read_text())
        except (OSError, ValueError):
            live = {}
    now = int(time.time() * 1000)
    c = outbox.counters
    unconfirmed = outbox.unconfirmed
    if args.json:
        report = {
            "device": config.device,
            "depth": outbox.depth,
            "bytes": outbox.bytes,
            "events_pending": outbox.events,
            "oldest_unsent_ms": outbox.oldest_ms,
            "delivery": config.delivery.mode,
            "unconfirmed": unconfirmed.count,
            "unconfirmed_bytes": unconfirmed.bytes,
            "oldest_unconfirmed_sent_ms": unconfirmed.oldest_sent_ms,
            "rejected": outbox.rejected,
            "counters": c,
            "agent": live,
            "events": [
                {
                    "seq": e.seq,
                    "summary": e.summary,
                    "created_ms": e.created_ms,
                    "acked_ms": e.acked_ms,
                    "delivered_ms": e.delivered_ms,
                    "state": _event_state(
                        e,
                        now,
                        config.diagnostics.receipt_deadline_s * 1000,
                        live.get("publisher", {}).get("last_error"),
                    ),
                }
                for e in outbox.events_log
            ],
        }
        print(json.dumps(report, indent=2))
        return 0
    last_ack = c.get("last_ack_ms") or None
    running = live.get("state") == "running" and now - int(live.get("updated_ms", 0)) < 5000
    lines = [
        f"device            {config.device}",
        f"agent             {'running' if running else 'not running'}"
        + (f", {'connected' if live.get('connected') else 'not connected'}" if running else ""),
        f"outbox            {config.outbox.path}",
        f"  waiting         {outbox.depth} envelope(s), {outbox.bytes} bytes "
        f"({outbox.events} event envelope(s))",
        f"  unsent          {outbox.depth - unconfirmed.count} envelope(s), oldest "
        f"{_age(outbox.oldest_ms, now)}",
        f"  unconfirmed     {unconfirmed.count} envelope(s) sent and not yet confirmed by a "
        f"bridge, oldest sent {_age(unconfirmed.oldest_sent_ms, now)}",
        f"  acknowledged    {c.get('acked', 0)} by the broker, last {_age(last_ack, now)}",
        f"  confirmed       {c.get('confirmed', 0)} by a bridge (delivery: {config.delivery.mode})",
        f"  evicted         {c.get('evicted', 0)} ({c.get('evicted_bytes', 0)} bytes, "
        f"{c.get('evicted_events', 0)} events)",
        f"  rejected        {outbox.rejected} (refused by the broker; kept in the outbox file)",
        f"  dropped         {c.get('dropped', 0)} (no room even after evicting)",
        f"  disk full       {c.get('disk_full', 0)} time(s)",
        f"  next sequence   {c.get('next_seq', 1)}",
    ]
    lines += _ingest_lines(live)
    error = live.get("publisher", {}).get("last_error") if running else None
    if error:
        lines.append(f"last error        {error}")
    if outbox.events_log:
        lines.append("events")
        deadline_ms = config.diagnostics.receipt_deadline_s * 1000
        for e in outbox.events_log:
            lines.append(
                f"  #{e.seq:<6} {e.summary:<28} {_event_state(e, now, deadline_ms, error)}"
            )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
