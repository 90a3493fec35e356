"""``canvoy sim``: drive the demo vehicle live (run), into a log (record), or as a fleet (fleet)."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import can

from canvoy.certs import pki
from canvoy.commands.options import add_broker, add_certs, live_speed, parse_broker
from canvoy.errors import ConfigError, PKIError, TransportError
from canvoy.signals import stop_on_signals
from canvoy.simulator.emit import DEMO_DBC, DEMO_HV_DBC, Drive, record, run_live
from canvoy.simulator.fleet import VirtualDevice, drive_series
from canvoy.simulator.scenarios import load_scenario
from canvoy.transport.mqtt import Connection


def add_parser(sub: Any) -> None:
    """Register ``canvoy sim`` and its subcommands."""
    parser = sub.add_parser(
        "sim",
        help="simulate the demo vehicle or a fleet",
        description="The demo vehicle on a CAN bus (run), into a log (record), or a fleet of "
        "virtual devices publishing to a broker (fleet).",
        epilog="example:\n  canvoy sim record --scenario overheat -o drive.blf",
    )
    sim_sub = parser.add_subparsers(dest="sim_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--scenario",
            default="normal",
            help="normal, overheat, battery_ageing, intermittent_sensor, bus_noise "
            "or a scenario YAML file",
        )
        p.add_argument("--seed", type=int, default=1, help="the same seed gives the same drive")
        p.add_argument(
            "--dbc",
            type=Path,
            action="append",
            help=f"databases (default: {DEMO_DBC.name} and {DEMO_HV_DBC.name})",
        )

    run = sim_sub.add_parser(
        "run",
        help="send the drive onto a CAN bus at real time",
        epilog="examples:\n  canvoy sim run --scenario overheat --speed x10\n"
        "  canvoy sim run --interface socketcan --channel vcan0 --transmit",
    )
    common(run)
    run.add_argument("--interface", default="virtual", help="virtual, socketcan, ...")
    run.add_argument("--channel", default="canvoy-demo", help="e.g. vcan0 or can0")
    run.add_argument("--fd-channel", help="channel for the CAN FD bus (HV battery)")
    run.add_argument("--duration", type=float, help="seconds (default: one drive cycle)")
    run.add_argument(
        "--speed",
        type=live_speed,
        default=1.0,
        help="pace: realtime or xN (x2: twice as fast; 2 means x2 too; default realtime)",
    )
    run.add_argument(
        "--transmit",
        action="store_true",
        help="really send onto a non-virtual interface (it may be a vehicle's bus)",
    )
    run.set_defaults(func=_run)

    rec = sim_sub.add_parser(
        "record",
        help="write the drive to a log file as fast as possible",
        epilog="example:\n  canvoy sim record --scenario battery_ageing --duration 600 -o d.asc",
    )
    common(rec)
    rec.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="log file: .blf .asc .log .csv .trc .mf4 .db",
    )
    rec.add_argument("--duration", type=float, help="seconds (default: one drive cycle)")
    rec.set_defaults(func=_record)

    fleet = sim_sub.add_parser(
        "fleet",
        help="N vehicles publishing signed batches to a broker",
        epilog="example:\n  canvoy sim fleet --vehicles 50 --certs fleet --broker localhost",
    )
    fleet.add_argument("--vehicles", type=int, required=True, help="how many virtual devices")
    add_certs(fleet, "the fleet PKI directory (missing devices are issued in it)")
    add_broker(fleet)
    fleet.add_argument(
        "--duration", type=float, default=60.0, help="seconds of publishing (default 60)"
    )
    fleet.add_argument("--signals", type=int, default=20, help="signals per vehicle")
    fleet.add_argument("--prefix", default="sim", help="device ids are <prefix>-0001 ...")
    fleet.set_defaults(func=_fleet)


def _drive(args: argparse.Namespace) -> tuple[Drive, float]:
    scenario = load_scenario(args.scenario)
    databases = args.dbc or [DEMO_DBC, DEMO_HV_DBC]
    duration = args.duration or scenario.duration_s
    if duration <= 0:
        raise ConfigError("--duration must be positive")
    return Drive(scenario, seed=args.seed, databases=databases), duration


def _record(args: argparse.Namespace) -> int:
    drive, duration = _drive(args)
    start = time.perf_counter()
    frames = record(drive, args.output, duration)
    faults = ", ".join(f"{code} {what} at {t:.1f} s" for t, code, what in drive.faults.history)
    print(
        f"wrote {frames:,} frames ({duration:.0f} s of driving, scenario "
        f"{drive.scenario.name}) to {args.output} in {time.perf_counter() - start:.1f} s"
        + (f"; {faults}" if faults else "")
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    drive, duration = _drive(args)
    if args.interface != "virtual" and not args.transmit:
        where = f"{args.interface}/{args.channel}" + (
            f" and {args.interface}/{args.fd_channel}" if args.fd_channel else ""
        )
        raise ConfigError(
            f"refusing to transmit: this would send {len(drive.schedules)} simulated messages "
            f"(scenario {drive.scenario.name}, {duration:.0f} s) onto {where}, which may be a "
            "real vehicle's bus; pass --transmit if that is what you want"
        )
    stop = threading.Event()
    stop_on_signals(stop.set)
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel)
        fd_bus = (
            can.Bus(interface=args.interface, channel=args.fd_channel, fd=True)
            if args.fd_channel
            else None
        )
    except (can.CanError, OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot open {args.interface}/{args.channel}: {exc} (see docs/CAN.md)"
        ) from exc
    try:
        sent = run_live(drive, bus, fd_bus, duration, stop=stop, speed=args.speed)
    finally:
        bus.shutdown()
        if fd_bus is not None:
            fd_bus.shutdown()
    print(f"sent {sent:,} frames on {args.interface}/{args.channel}")
    return 0


def _fleet(args: argparse.Namespace) -> int:
    host, port = parse_broker(args.broker)
    ca = pki.ca_cert_path(args.certs)
    if not ca.exists():
        raise PKIError(f"no fleet CA in {args.certs}: run 'canvoy certs init --certs {args.certs}'")
    stop = threading.Event()
    stop_on_signals(stop.set)
    vehicles: list[tuple[VirtualDevice, Connection]] = []
    issued = 0
    for i in range(1, args.vehicles + 1):
        name = f"{args.prefix}-{i:04}"
        if not (pki.identity_dir(args.certs, "device", name) / "cert.pem").exists():
            pki.issue(args.certs, "device", name)
            issued += 1
        dev = VirtualDevice.from_pki(args.certs, name)
        conn = Connection(client_id=name, tls=pki.tls_files(args.certs, "device", name).context())
        conn.connect(host, port)
        conn.publish(dev.topic("status"), dev.birth(), retain=True)
        vehicles.append((dev, conn))
    if issued:
        print(
            f"issued {issued} new device certificate(s): the broker accepts their publishes "
            "once its ACL is reloaded (SIGHUP to 'canvoy broker')"
        )
    print(f"{len(vehicles)} vehicles connected; publishing one batch per vehicle per second")
    sent = failed = 0
    first_error = ""
    start = time.time()
    second = 0
    while not stop.is_set() and second < args.duration:
        futures = [
            conn.publish(
                dev.topic("telemetry"),
                dev.telemetry(drive_series(start + second, 1.0, args.signals)),
            )
            for dev, conn in vehicles
        ]
        for fut in futures:
            try:
                fut.result(30)
                sent += 1
            except (TransportError, TimeoutError) as exc:
                failed += 1
                first_error = first_error or str(exc)
        second += 1
        stop.wait(max(0.0, start + second - time.time()))
    for _dev, conn in vehicles:
        conn.close()
    print(f"published {sent:,} batches ({failed} failed) from {len(vehicles)} vehicles")
    if failed:
        print(f"first failure: {first_error}")
    return 1 if failed else 0
