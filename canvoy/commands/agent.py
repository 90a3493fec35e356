"""``canvoy agent``: write a config (init), run the agent (run), and show its outbox (status)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from canvoy.agent.config import AgentConfig, load_config
from canvoy.agent.outbox import EventStatus, OutboxStatus, open_status
from canvoy.agent.policy import load_policy
from canvoy.agent.service import Agent, status_path
from canvoy.certs import pki
from canvoy.commands.options import (
    add_broker,
    add_certs,
    add_config,
    config_path,
    parse_broker,
    replay_speed,
)
from canvoy.errors import ConfigError
from canvoy.signals import stop_on_signals
from canvoy.wire.ids import check_id

CONFIG_TEMPLATE = """\
# canvoy agent config, written by 'canvoy agent init': every key with its value, and what it
# does; docs/CONFIG.md describes each. Relative paths are relative to this file's folder
# (paths under it are written that way, so the folder can move); absolute paths stay as they are.
# Run it with: canvoy agent run --config {config}

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
{source}    j1939: null               # null: detect from the database; true: match ids by PGN
    filters: auto             # auto: the driver passes only the databases' ids; none: everything
    obd: null                 # OBD-II polling on a live bus: {{pids: {{"0C": 1.0}}}} (CONFIG.md)

# The collection policy (docs/POLICY.md); null collects every signal but counters/checksums.
policy: {policy}

# When a telemetry batch is closed: whichever comes first.
batch:
  max_interval_s: 1.0
  max_samples: 20000
  max_bytes: 98304          # uncompressed estimate; the signed envelope stays <= 128 KiB
  queue_samples: 200000     # samples waiting for the sealing thread; beyond, dropped and counted
  queue_events: 10000       # event envelopes waiting for the sealing thread

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
  connect_timeout_s: 10.0   # wait this long for the broker's CONNACK
  max_inflight: 20
  max_publishes_per_s: 100
  max_bytes_per_s: 524288
  reconnect_min_s: 1.0
  reconnect_max_s: 60.0
  stall_timeout_s: 5.0      # publishes in flight and no PUBACK this long: reconnect
  probe_interval_s: 0.5     # while the broker is unreachable, probe its port this often
  heartbeat_s: 60           # the retained online status again this often (canvoy fleet status)

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
  latitude: "*/GNSS_POSITION/Latitude"    # sent only when the policy collects it (consent)
  longitude: "*/GNSS_POSITION/Longitude"
  freeze_frame: ["*/ENGINE_1/EngineSpeed", "*/ENGINE_1/EngineLoad", "*/ENGINE_2/CoolantTemp",
                 "*/ENGINE_2/OilPressure", "*/VEHICLE_DYNAMICS/VehicleSpeed",
                 "*/BATTERY_12V/BatteryVoltage"]
  lamps: {{}}                 # warning-lamp signals (glob: code), e.g. {{"*/DASH/MilLamp": MIL}}
  receipt_deadline_s: 300.0 # an event a bridge has not confirmed by then is shown as overdue
  resume_s: 60.0            # after a restart, an open episode's source has this long to report
  triggers: []
  # - name: coolant_overtemp
  #   when: "CoolantTemp > 112 for 5 s"
  #   freeze_frame: [CoolantTemp, EngineSpeed, VehicleSpeed, CoolantFanDuty]
  #   before_s: 10
  #   after_s: 5

# Prometheus metrics at http://127.0.0.1:9731/metrics (docs/OPERATIONS.md); off unless enabled.
metrics:
  enabled: false
  host: 127.0.0.1
  port: 9731

# On SIGTERM: how long to wait for acknowledgements of what is still in flight.
shutdown_timeout_s: 10.0
"""


def add_parser(sub: Any) -> None:
    """Register ``canvoy agent`` and its subcommands."""
    parser = sub.add_parser(
        "agent",
        help="the in-vehicle agent: init, run, status",
        description="Write an agent config, run the agent, or show its outbox.",
        epilog="example:\n  canvoy agent init --device car-1 --certs fleet --broker mq.example.com "
        "--dbc car.dbc --bus socketcan:can0 -o agent.yaml\n"
        "  canvoy agent run --config agent.yaml",
    )
    agent_sub = parser.add_subparsers(dest="agent_command", required=True, metavar="ACTION")

    init = agent_sub.add_parser(
        "init",
        help="write a complete, commented agent config",
        description="Writes every key of the agent config with its value and a comment, checks "
        "that it loads, and prints how to run it.",
        epilog="examples:\n"
        "  canvoy agent init --device car-1 --certs fleet --broker mq.example.com \\\n"
        "      --dbc car.dbc --bus socketcan:can0 -o /etc/canvoy/agent.yaml\n"
        "  canvoy agent init --device car-1 --certs fleet --broker localhost:8883 \\\n"
        "      --dbc demo_vehicle.dbc --replay drive.blf --speed x10 --loop -o agent.yaml",
    )
    init.add_argument("--device", required=True, help="device id (its certificate CN)")
    add_certs(init)
    init.add_argument(
        "--key", type=Path, help="the device key, when it is not in the PKI (certs request)"
    )
    init.add_argument("--cert", type=Path, help="the device certificate that goes with --key")
    add_broker(init)
    init.add_argument(
        "--dbc",
        type=Path,
        required=True,
        action="append",
        metavar="FILE",
        help="a DBC, KCD, SYM or ARXML database (repeatable)",
    )
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--replay", type=Path, metavar="LOGFILE", help="replay a CAN log")
    source.add_argument(
        "--bus", metavar="INTERFACE:CHANNEL", help="a live python-can bus, e.g. socketcan:can0"
    )
    init.add_argument(
        "--speed",
        type=replay_speed,
        default="max",
        help="replay pace: max, realtime or xN (x10: ten times real time; 10 means x10 too)",
    )
    init.add_argument("--loop", action="store_true", help="replay the log again and again")
    init.add_argument("--policy", type=Path, metavar="FILE", help="collection policy file")
    init.add_argument(
        "--outbox",
        type=Path,
        default=Path("canvoy-outbox.sqlite"),
        metavar="FILE",
        help="the SQLite outbox (default: canvoy-outbox.sqlite in the working directory)",
    )
    init.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the config to write"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=_init)

    run = agent_sub.add_parser(
        "run",
        help="run the agent until SIGTERM",
        description="Collects, seals and publishes until SIGTERM or Ctrl-C; what is not yet "
        "acknowledged stays in the outbox for the next start.",
        epilog="examples:\n  canvoy agent run --config agent.yaml --log-format json\n"
        "  canvoy agent run --config replay.yaml --exit-when-done -v",
    )
    add_config(run, "agent")
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop once every replayed log has ended and the outbox is acknowledged",
    )
    run.set_defaults(func=_run, service=True)

    status = agent_sub.add_parser(
        "status",
        help="outbox depth, age, evictions, rejections",
        description="Reads the outbox (read-only) and the running agent's status file.",
        epilog="example:\n  canvoy agent status --config agent.yaml --json",
    )
    add_config(status, "agent")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def _init(args: argparse.Namespace) -> int:
    device = check_id(args.device)
    host, port = parse_broker(args.broker)
    cert_path, key_path = _device_files(args, device)
    if args.output.exists() and not args.force:
        raise ConfigError(f"{args.output} exists: pass --force to overwrite it")
    out = args.output
    if args.replay is not None:
        speed = args.speed if isinstance(args.speed, str) else f"x{args.speed:g}"
        source = (
            "    interface: null           # a live bus instead: interface and channel, no replay\n"
            "    channel: null\n"
            "    bitrate: null\n"
            "    fd: false\n"
            "    options: {}\n"
            f"    replay: {config_path(args.replay, out)}\n"
            f"    speed: {speed:<18} # max, realtime or xN\n"
            f"    loop: {str(args.loop).lower()}\n"
        )
    else:
        interface, _, channel = args.bus.partition(":")
        if not interface or not channel:
            raise ConfigError(f"--bus {args.bus!r} must be INTERFACE:CHANNEL, e.g. socketcan:can0")
        source = (
            f"    interface: {json.dumps(interface)}\n"
            f"    channel: {json.dumps(channel)}\n"
            "    bitrate: null             # null: the interface's own (SocketCAN: 'ip link')\n"
            "    fd: false                 # true: CAN FD\n"
            "    options: {}               # passed to can.Bus(...) unchanged\n"
            "    replay: null              # or a log file to replay instead of a live bus\n"
            "    speed: max                # replay pace: max, realtime or xN\n"
            "    loop: false\n"
        )
    text = CONFIG_TEMPLATE.format(
        config=out,
        device=device,
        ca=config_path(pki.ca_cert_path(args.certs), out),
        cert=config_path(cert_path, out),
        key=config_path(key_path, out),
        bus_name="can0",
        dbc=", ".join(config_path(d, out) for d in args.dbc),
        source=source,
        policy=config_path(args.policy, out) if args.policy else "null",
        outbox=config_path(args.outbox, out),
        host=json.dumps(host),
        port=port,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    load_policy(load_config(out).policy)  # what we wrote must run as is
    print(f"wrote {out}; run it with: canvoy agent run --config {out}")
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
    if ms > now_ms:  # stamped before the clock was set back
        return f"{(ms - now_ms) / 1000:.1f} s ahead of this clock (it was set back since)"
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


def _replay_lines(live: dict[str, Any]) -> list[str]:
    """Each replay's progress: frames read of the log's total, and whether it has ended."""
    lines = []
    for bus, r in sorted(live.get("replays", {}).items()):
        if not isinstance(r, dict):
            continue
        frames, total = int(r.get("frames", 0)), r.get("total")
        of = f" of {total:,}" if isinstance(total, int) and not r.get("loop") else ""
        if r.get("ended"):
            text = f"ended: {frames:,} frames read"
        elif r.get("percent") is not None:
            turn = f" (looping; {total:,} per pass)" if r.get("loop") else ""
            text = f"{frames:,}{of} frames ({r['percent']:.1f}%){turn}"
        else:
            text = f"{frames:,} frames read (counting the log's total)"
        lines.append(f"  replay {bus:<8} {text}")
    return ["replay", *lines] if lines else []


def _not_run_yet(config: AgentConfig, args: argparse.Namespace) -> int:
    path = config.outbox.path
    if args.json:
        print(json.dumps({"device": config.device, "state": "not run yet", "outbox": str(path)}))
    else:
        print(
            f"device            {config.device}\n"
            f"agent             has not run yet (no outbox at {path}); start it with: "
            f"canvoy agent run --config {args.config}"
        )
    return 0


def _status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.outbox.path.exists():
        return _not_run_yet(config, args)
    outbox = open_status(config.outbox.path)
    live_path = status_path(config.outbox.path)
    live: dict[str, Any] = {}
    if live_path.exists():
        try:
            read = json.loads(live_path.read_text())
        except (OSError, ValueError):
            read = {}
        live = read if isinstance(read, dict) else {}
    now = int(time.time() * 1000)
    try:
        return _show(args, config, outbox, live, now)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The live file is the agent's, rewritten while it runs: one that is damaged (a value
        # of the wrong type) costs only its own lines; the outbox has the durable counts.
        print(
            f"warning: {live_path} is damaged ({type(exc).__name__}: {exc}): shown without it",
            file=sys.stderr,
        )
        return _show(args, config, outbox, {}, now)


def _show(
    args: argparse.Namespace,
    config: AgentConfig,
    outbox: OutboxStatus,
    live: dict[str, Any],
    now: int,
) -> int:
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
    replays = [r for r in live.get("replays", {}).values() if isinstance(r, dict)]
    ended = running and bool(replays) and all(r.get("ended") for r in replays)
    lines = [
        f"device            {config.device}",
        f"agent             {'running' if running else 'not running'}"
        + (f", {'connected' if live.get('connected') else 'not connected'}" if running else "")
        + (", replay ended (publishing what is left)" if ended else ""),
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
    lines += _replay_lines(live) if running or live.get("state") == "stopped" else []
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
