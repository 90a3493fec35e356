"""``canvoy demo``: the whole chain on one machine, from a recorded overheat drive to a ticket.

PKI -> Mosquitto (mutual TLS) -> bridge (JSON Lines, fleet republish, a local service-desk
webhook) -> agent replaying the recorded ``overheat`` drive. Shows progress, then a summary, and
stops everything it started.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from rich.console import Console

from canvoy import dbc as shipped
from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from canvoy.dbc import DEMO_DBC, DEMO_HV_DBC, DEMO_POLICY
from canvoy.errors import CanvoyError, ConfigError
from canvoy.simulator.emit import Drive, record
from canvoy.simulator.scenarios import load_scenario

DEVICE, BRIDGE, OPERATOR = "demo-car-1", "demo-bridge", "demo-ops"
DRIVE_S = 600.0
MARKER = ".canvoy-demo"  # the folder is the demo's own: the next run may remove it
DEMO_TRIGGER = """\
  triggers:
    - name: coolant_overtemp
      when: "CoolantTemp > 112 for 5 s"
      freeze_frame: [CoolantTemp, CoolantFanDuty, EngineSpeed, VehicleSpeed]
      before_s: 10
      after_s: 5
"""
SPEED = "x20"


@dataclass
class ServiceDesk:
    """A stand-in for a CRM / service-order system: verifies webhooks and keeps them.

    Every delivery is checked with the ``standardwebhooks`` package against the secret the
    bridge signs with, as a real service desk would; one that does not verify gets a 401.
    """

    secret_file: Path
    received: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    server: ThreadingHTTPServer | None = None

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        # The bridge's extra; a vehicle-only install has the CLI without it.
        from standardwebhooks import Webhook, WebhookVerificationError

        desk = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    secret = desk.secret_file.read_text().strip()
                    Webhook(secret).verify(data, dict(self.headers.items()))
                except (OSError, ValueError, WebhookVerificationError):
                    desk.rejected += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                desk.received.append(
                    {"key": self.headers.get("webhook-id"), "body": json.loads(data)}
                )
                self.send_response(201)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def tickets(self) -> list[dict[str, Any]]:
        """The service ticket changes the desk received (de-duplicated by webhook-id)."""
        seen: dict[str, dict[str, Any]] = {}
        for item in self.received:
            if "ticket_id" in item["body"]:
                seen[item["key"]] = item["body"]
        return list(seen.values())

    def unclosed(self) -> set[str]:
        """Tickets that opened and have not closed (yet)."""
        changes = self.tickets()
        opened = {t["ticket_id"] for t in changes if t["status"] == "open"}
        return opened - {t["ticket_id"] for t in changes if t["status"] == "closed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _clear(workdir: Path) -> None:
    """Remove an earlier demo's folder; never a folder the demo did not make."""
    if workdir.is_file():
        raise ConfigError(f"--workdir {workdir} is a file: name a folder for the demo")
    if not workdir.exists():
        return
    earlier = all((workdir / n).exists() for n in ("pki", "agent.yaml", "bridge.yaml"))
    if (workdir / MARKER).exists() or earlier:  # (an earlier version's demo made no marker)
        shutil.rmtree(workdir)
    elif any(workdir.iterdir()):
        raise ConfigError(
            f"--workdir {workdir} holds files the demo did not make: name a new or empty folder"
        )
    else:
        workdir.rmdir()


@contextmanager
def _process(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=log.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise CanvoyError(f"demo: {what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.1)


def run_demo(workdir: Path, console: Console) -> int:
    """Run the demo in ``workdir`` (recreated when an earlier demo made it); return the exit code.

    Raises:
        ConfigError: ``workdir`` is a file, or a folder with files the demo did not make.
    """
    workdir = workdir.resolve()
    _clear(workdir)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by canvoy demo; removed with its folder by the next one\n")
    certs = workdir / "pki"
    log = _prepare(workdir, certs, console)
    port = _free_port()
    with ExitStack() as stack:
        broker = Broker(BrokerSettings(certs=certs, port=port, data=workdir / "broker"))
        broker_log = stack.enter_context((workdir / "mosquitto.log").open("wb"))
        broker.start(log=broker_log)
        stack.callback(broker.stop)
        desk = ServiceDesk(workdir / "webhook-secret")  # written by 'canvoy bridge init'
        desk_port = desk.start()
        stack.callback(desk.stop)
        console.print(
            f"[bold]3/5[/] Mosquitto on 127.0.0.1:{port} (mutual TLS); service desk "
            f"webhook on 127.0.0.1:{desk_port}"
        )
        bridge = _start_bridge(stack, workdir, certs, port, desk_port)
        _run_agent(workdir, certs, port, log=log, desk=desk, console=console)
        _wait(
            lambda: bool(desk.tickets()) and not desk.unclosed(),
            60,
            "every service ticket that opened closing at the service desk",
        )
        bridge.terminate()
        bridge.wait(15)
        _summary(console, workdir, desk, port)
    return 0


def _prepare(workdir: Path, certs: Path, console: Console) -> Path:
    console.print("[bold]1/5[/] fleet PKI: CA, broker, device, bridge and operator certificates")
    pki.init_ca(certs)
    pki.issue(certs, "broker", "broker", hosts=["localhost", "127.0.0.1"])
    pki.issue(certs, "device", DEVICE)
    pki.issue(certs, "bridge", BRIDGE)
    pki.issue(certs, "operator", OPERATOR)

    console.print(f"[bold]2/5[/] recording a {DRIVE_S:.0f} s 'overheat' drive of the demo vehicle")
    drive = Drive(load_scenario("overheat"), seed=7)
    log = workdir / "overheat.blf"
    frames = record(drive, log, DRIVE_S)
    faults = ", ".join(f"{code} {what} at {t:.0f} s" for t, code, what in drive.faults.history)
    console.print(f"      {frames:,} frames; scripted: {faults}")

    return log


def _start_bridge(
    stack: ExitStack, workdir: Path, certs: Path, port: int, desk_port: int
) -> subprocess.Popen[bytes]:
    secret = workdir / "webhook-secret"  # 'canvoy bridge init' writes a new one here
    bridge_yaml = workdir / "bridge.yaml"
    _canvoy(
        "bridge",
        "init",
        "--certs",
        str(certs),
        "--identity",
        f"bridge/{BRIDGE}",
        "--broker",
        f"127.0.0.1:{port}",
        "--jsonl",
        str(workdir / "records.jsonl"),
        "--webhook",
        f"http://127.0.0.1:{desk_port}/orders",
        "--webhook-secret-file",
        str(secret),
        "-o",
        str(bridge_yaml),
    )
    status = workdir / "bridge-status.json"
    text = bridge_yaml.read_text().replace("status_file: null", f'status_file: "{status}"')
    bridge_yaml.write_text(text)
    bridge = stack.enter_context(
        _process(
            [sys.executable, "-m", "canvoy", "bridge", "run", "--config", str(bridge_yaml)],
            workdir / "bridge.log",
        )
    )
    _wait(lambda: bool(_read_json(status).get("connected")), 30, "bridge connected")
    return bridge


def _run_agent(
    workdir: Path, certs: Path, port: int, *, log: Path, desk: ServiceDesk, console: Console
) -> None:
    agent_yaml = workdir / "agent.yaml"
    databases = [shipped.copy(n, workdir, force=True) for n in (DEMO_DBC, DEMO_HV_DBC, DEMO_POLICY)]
    _canvoy(
        "agent",
        "init",
        "--device",
        DEVICE,
        "--certs",
        str(certs),
        "--broker",
        f"127.0.0.1:{port}",
        "--dbc",
        str(databases[0]),
        "--dbc",
        str(databases[1]),
        "--replay",
        str(log),
        "--speed",
        SPEED,
        "--policy",
        str(databases[2]),
        "--outbox",
        str(workdir / "outbox.sqlite"),
        "-o",
        str(agent_yaml),
    )
    # A threshold trigger with a freeze frame, next to the DTC the car itself broadcasts.
    text = agent_yaml.read_text().replace("  triggers: []\n", DEMO_TRIGGER)
    agent_yaml.write_text(text)
    console.print(
        f"[bold]4/5[/] bridge and agent running; the agent replays the drive at "
        f"{SPEED[1:]}x real time"
    )
    agent_status = workdir / "outbox.sqlite.status.json"
    bridge_status = workdir / "bridge-status.json"
    cmd = [
        sys.executable,
        "-m",
        "canvoy",
        "agent",
        "run",
        "--config",
        str(agent_yaml),
        "--exit-when-done",
    ]
    with _process(cmd, workdir / "agent.log") as agent:
        last = ""
        while agent.poll() is None:
            line = _progress(_read_json(agent_status), _read_json(bridge_status), desk)
            if line != last:
                console.print(f"      {line}")
                last = line
            time.sleep(2.0)
    if agent.returncode != 0:
        raise CanvoyError(
            f"demo: the agent exited with {agent.returncode}; see {workdir / 'agent.log'}"
        )


def _events_report(workdir: Path) -> list[str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "agent",
            "status",
            "--config",
            str(workdir / "agent.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        check=False,
    )
    lines = done.stdout.splitlines()
    return (
        [line.strip() for line in lines[lines.index("events") + 1 :]] if "events" in lines else []
    )


def _canvoy(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise CanvoyError(f"demo: canvoy {' '.join(args[:2])} failed: {done.stderr.strip()}")


def _progress(agent: dict[str, Any], bridge: dict[str, Any], desk: ServiceDesk) -> str:
    frames = sum(b.get("frames", 0) for b in agent.get("buses", {}).values())
    pub = agent.get("publisher", {})
    forwarded = bridge.get("counts", {}).get("forwarded", 0)
    tickets = len(desk.tickets())
    acked = pub.get("acked", 0)
    return (
        f"frames {frames:>9,} | acknowledged {acked:>3} | "
        f"bridge forwarded {forwarded:>3} | service desk: {tickets} ticket update(s)"
    )


def _summary(console: Console, workdir: Path, desk: ServiceDesk, port: int) -> None:
    agent = _read_json(workdir / "outbox.sqlite.status.json")
    bridge = _read_json(workdir / "bridge-status.json").get("counts", {})
    buses = agent.get("buses", {}).values()
    pub = agent.get("publisher", {})
    batches = agent.get("batches", {})
    console.print("[bold]5/5[/] summary")
    console.print(f"      frames read          {sum(b.get('frames', 0) for b in buses):,}")
    console.print(f"      frames decoded       {sum(b.get('decoded', 0) for b in buses):,}")
    console.print(f"      samples collected    {batches.get('samples', 0):,}")
    console.print(
        f"      envelopes signed     {pub.get('published', 0)} "
        f"({batches.get('batches', 0)} telemetry batches, "
        f"{batches.get('events', 0)} events)"
    )
    console.print(f"      acknowledged         {pub.get('acked', 0)} by the broker")
    console.print(f"      bytes sent           {pub.get('bytes_acked', 0):,}")
    console.print(
        f"      envelopes verified   {bridge.get('verified', 0)} by the bridge, "
        f"{bridge.get('forwarded', 0)} forwarded"
    )
    changes = desk.tickets()
    opened = {t["ticket_id"] for t in changes if t["status"] == "open"}
    console.print(
        f"      service desk         {len(changes)} ticket change(s) verified with "
        f"standardwebhooks, {desk.rejected} rejected; {len(opened)} ticket(s) opened, "
        f"{len(opened) - len(desk.unclosed())} closed"
    )
    for t in changes:
        where = f", at {t['location']['lat']}, {t['location']['lon']}" if t.get("location") else ""
        dtc = t["dtcs"][0]
        frame = t.get("freeze_frame") or {}
        samples = sum(len(v) for v in frame.values())
        console.print(
            f"      [bold red]service ticket[/] {t['ticket_id']} {t['status']}: {dtc['code']} "
            f"{dtc['description'] or t['title']} ({t['severity']}; odometer "
            f"{t.get('odometer_km')} km{where}"
            + (f"; freeze frame of {samples} samples" if samples else "")
            + "); "
            f"evidence {t['evidence'][0]['envelope']}"
        )
    events = _events_report(workdir)
    if events:
        console.print("      the agent's view (canvoy agent status):")
        for line in events:
            console.print(f"        {line}")
    console.print("\nAn operator follows the fleet live with (while a broker runs):")
    console.print(
        f"  canvoy tail --certs {workdir / 'pki'} --identity operator/{OPERATOR} "
        f"--broker 127.0.0.1:{port}"
    )
    console.print(f"Everything the demo made is in {workdir}.")
