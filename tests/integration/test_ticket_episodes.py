"""One service ticket per fault episode, end to end: agent -> Mosquitto -> bridge process ->
a webhook receiver that verifies every delivery with ``standardwebhooks``.

Every source (a DBC DTC, a trigger, J1939 DM1 over BAM, OBD-II from the simulated ECU) opens one
ticket and closes it, and an agent SIGKILLed twice while P0217 is active still makes one ticket.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from canvoy.agent.config import load_config
from canvoy.agent.service import Agent, status_path
from canvoy.certs import pki
from canvoy.simulator.j1939 import dm1_frames
from canvoy.simulator.model import Vehicle
from canvoy.simulator.obd import ObdEcu
from canvoy.wire.dtc import encode_dtc
from tests.agentkit import REPO, start_agent, stop
from tests.bridgekit import WebhookReceiver, bridge_config, bridge_ready, start_bridge
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEMO_DBC = REPO / "dbc" / "demo_vehicle.dbc"
J1939_DBC = REPO / "tests" / "data" / "j1939_ec1.dbc"
TICKETS = """  tickets: [desk]
service_rules:
  - {match: "*", severity: high}
"""


@pytest.fixture
def desk(broker: RunningBroker, tmp_path: Path, webhook: WebhookReceiver) -> Iterator[Desk]:
    """A bridge process whose tickets go to a verifying webhook receiver."""
    config = bridge_config(tmp_path / "bridge.yaml", broker, webhook=webhook.url, extra=TICKETS)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), timeout_s=30, what="bridge connected")
        yield Desk(webhook)
    finally:
        assert stop(bridge) == 0


class Desk:
    """What the service desk saw: ticket changes by id, de-duplicated by ``webhook-id``."""

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    def _bodies(self) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for r in list(self.receiver.requests):
            assert r.verified, "a delivery did not verify with standardwebhooks"
            seen.setdefault(r.headers["webhook-id"], r.json)
        return list(seen.values())

    def tickets(self) -> dict[str, list[str]]:
        """ticket id -> statuses in order of arrival."""
        out: dict[str, list[str]] = {}
        for body in self._bodies():
            if "ticket_id" in body:
                out.setdefault(str(body["ticket_id"]), []).append(str(body["status"]))
        return out

    def codes(self) -> dict[str, set[str]]:
        """code -> ticket ids."""
        out: dict[str, set[str]] = {}
        for body in self._bodies():
            if "ticket_id" in body:
                code = str(body["dtcs"][0]["code"])
                out.setdefault(code, set()).add(str(body["ticket_id"]))
        return out

    def events(self, what: str) -> int:
        """Agent events of kind ``what`` forwarded to the desk."""
        return sum(
            1
            for b in self._bodies()
            if isinstance(b.get("event"), dict) and b["event"].get("what") == what
        )

    def closed(self, *codes: str) -> Callable[[], bool]:
        """A condition: every ticket of every code in ``codes`` has closed."""

        def done() -> bool:
            by_code, tickets = self.codes(), self.tickets()
            return all(
                code in by_code and all("closed" in tickets[t] for t in by_code[code])
                for code in codes
            )

        return done

    def assert_one_ticket_each(self, *codes: str) -> None:
        """Exactly one ticket per code, opened once and closed once (updates in between)."""
        by_code, tickets = self.codes(), self.tickets()
        for code in codes:
            assert len(by_code.get(code, ())) == 1, (code, by_code)
            statuses = tickets[next(iter(by_code[code]))]
            assert statuses[0] == "open" and statuses[-1] == "closed", (code, statuses)
            assert statuses.count("open") == statuses.count("closed") == 1, (code, statuses)
        assert all(s[0] == "open" and s[-1] == "closed" for s in tickets.values()), tickets


def _agent_yaml(
    path: Path, broker: RunningBroker, buses: str, extra: str = "", device: str = "car-1"
) -> Path:
    folder = pki.identity_dir(broker.certs, "device", device)
    path.write_text(
        f"""device: {device}
tls: {{ca: "{pki.ca_cert_path(broker.certs)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
buses:
{buses}
outbox: {{path: "{path.parent / "outbox.sqlite"}"}}
batch: {{max_interval_s: 0.2}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_min_s: 0.2, reconnect_max_s: 1.0}}
shutdown_timeout_s: 10
{extra}"""
    )
    return path


def _replay_bus(name: str, dbc: Path, log: Path, speed: str = "max", j1939: bool = False) -> str:
    return f'  - {{name: {name}, databases: ["{dbc}"], replay: "{log}", speed: "{speed}"' + (
        ", j1939: true}" if j1939 else "}"
    )


def _dtc_log(path: Path, seconds: float, codes: Callable[[float], list[str]]) -> Path:
    """DIAG_DTC at 10 Hz with ``codes(t)`` and ENGINE_2 with a coolant that follows them."""
    db = cantools.database.load_file(str(DEMO_DBC))
    assert isinstance(db, cantools.database.can.Database)
    diag, engine = db.get_message_by_name("DIAG_DTC"), db.get_message_by_name("ENGINE_2")
    with can.Logger(str(path)) as logger:
        for i in range(int(seconds * 10)):
            t = 1_700_000_000.0 + i * 0.1
            active = [encode_dtc(c) for c in codes(t - 1_700_000_000.0)]
            slots = {f"Dtc{k + 1}": (active[k] if k < len(active) else 0) for k in range(3)}
            coolant = 118 if active else 90
            for message, values in (
                (diag, {"DtcCount": len(active), **slots}),
                (
                    engine,
                    {
                        "CoolantTemp": coolant,
                        "OilTemp": 90 + i % 7,  # something changes in every frame
                        "OilPressure": 300,
                        "IntakeAirTemp": 20,
                        "CoolantFanDuty": 50,
                    },
                ),
            ):
                data = message.encode(values)
                frame = can.Message(
                    timestamp=t, arbitration_id=message.frame_id, data=data, is_extended_id=False
                )
                logger.on_message_received(frame)
    return path


def test_a_dbc_dtc_and_a_trigger_each_open_one_ticket_and_close_it(
    broker: RunningBroker, tmp_path: Path, desk: Desk
) -> None:
    log = _dtc_log(tmp_path / "drive.log", 8.0, lambda t: ["P0217"] if 2 <= t < 6 else [])
    trigger = """diagnostics:
  triggers:
    - {name: overheat, when: "CoolantTemp > 112 for 1 s", freeze_frame: [CoolantTemp],
       before_s: 1, after_s: 1}
"""
    config = _agent_yaml(
        tmp_path / "agent.yaml", broker, _replay_bus("pt", DEMO_DBC, log), extra=trigger
    )
    agent = start_agent(config, tmp_path / "agent.log", "--exit-when-done")
    assert agent.wait(60) == 0
    wait_for(desk.closed("P0217", "overheat"), timeout_s=30, what="both tickets closed")
    desk.assert_one_ticket_each("P0217", "overheat")
    [overheat] = desk.codes()["overheat"]
    assert desk.tickets()[overheat] == ["open", "updated", "closed"]  # the freeze frame


def test_j1939_dm1_over_bam_opens_one_ticket_per_code_and_closes_it(
    broker: RunningBroker, tmp_path: Path, desk: Desk
) -> None:
    log = tmp_path / "truck.log"
    with can.Logger(str(log)) as logger:
        for second in range(10):
            t = 1_700_000_000.0 + second
            # Two and then three active codes: the DM1 takes a BAM transfer.
            dtcs = [(110, 0, 1), (100, 1, 1)] if 2 <= second < 7 else []
            if 4 <= second < 7:
                dtcs.append((523000, 31, 1))
            for frame in dm1_frames(dtcs, source=0x00, t=t, amber=1 if dtcs else 0):
                logger.on_message_received(frame)
    config = _agent_yaml(
        tmp_path / "agent.yaml", broker, _replay_bus("truck", J1939_DBC, log, j1939=True)
    )
    agent = start_agent(config, tmp_path / "agent.log", "--exit-when-done")
    assert agent.wait(60) == 0
    codes = ("SPN110-FMI0", "SPN100-FMI1", "SPN523000-FMI31")
    wait_for(desk.closed(*codes), timeout_s=30, what="the DM1 tickets closed")
    desk.assert_one_ticket_each(*codes)


def test_an_obd_dtc_from_the_simulated_ecu_opens_one_ticket_and_closes_it(
    broker: RunningBroker, tmp_path: Path, desk: Desk
) -> None:
    channel = f"canvoy-tickets-{random.randrange(1 << 30)}"
    bus = f"""  - name: obd
    databases: ["{DEMO_DBC}"]
    interface: virtual
    channel: {channel}
    obd: {{pids: {{"0C": 0.5}}, dtc_interval_s: 0.3, timeout_s: 1.0}}"""
    config = _agent_yaml(tmp_path / "agent.yaml", broker, bus)
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    vehicle = Vehicle(rng=random.Random(1), rpm=3000.0, coolant=121.0)
    ecu = ObdEcu(ecu_bus, vehicle)
    ecu.start()
    agent = Agent(load_config(config))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    try:
        vehicle.dtcs = ["P0217"]
        wait_for(lambda: "P0217" in desk.codes(), timeout_s=30, what="the OBD ticket opened")
        vehicle.dtcs = []
        wait_for(desk.closed("P0217"), timeout_s=30, what="the OBD ticket closed")
    finally:
        agent.stop()
        runner.join(30)
        ecu.stop()
        ecu_bus.shutdown()
    desk.assert_one_ticket_each("P0217")


def _status(config: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(status_path(config.parent / "outbox.sqlite").read_text())
    except (OSError, ValueError):
        return {}
    return data


def test_an_agent_killed_twice_while_p0217_is_active_makes_one_ticket(
    broker: RunningBroker, tmp_path: Path, desk: Desk
) -> None:
    # P0217 from the first frame to 8.5 s, then gone: every run replays the log from the start,
    # so each restart sees the code still active, and only the last run sees it clear.
    log = _dtc_log(tmp_path / "drive.log", 10.0, lambda t: ["P0217"] if t < 8.5 else [])
    config = _agent_yaml(
        tmp_path / "agent.yaml", broker, _replay_bus("pt", DEMO_DBC, log, speed="x1")
    )
    boots: list[Any] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        agent = start_agent(config, tmp_path / "agent.log")
        wait_for(lambda: "P0217" in desk.codes(), timeout_s=30, what="the P0217 ticket opened")
        boots.append(_status(config).get("boot"))
        stop(agent, signal.SIGKILL)
        for run in (1, 2):
            agent = start_agent(
                config, tmp_path / "agent.log", *(("--exit-when-done",) * (run == 2))
            )
            if run == 1:
                # The restarted agent continued the episode (it says so) and saw P0217 again.
                wait_for(lambda: desk.events("episodes_resumed") >= 1, timeout_s=30, what="resume")

                def busy() -> bool:
                    s = _status(config)
                    frames = sum(b["frames"] for b in s.get("buses", {}).values())
                    return s.get("boot") not in boots and frames >= 20

                wait_for(busy, timeout_s=30, what="the second run reading DTC frames")
                boots.append(_status(config).get("boot"))
                stop(agent, signal.SIGKILL)
        assert agent.wait(60) == 0
        wait_for(desk.closed("P0217"), timeout_s=30, what="the P0217 ticket closed")
    finally:
        if agent is not None and agent.poll() is None:
            stop(agent, signal.SIGKILL)
    assert desk.events("episodes_resumed") == 2
    desk.assert_one_ticket_each("P0217")
    assert desk.tickets()[next(iter(desk.codes()["P0217"]))] == ["open", "closed"]
    outbox = sqlite3.connect(f"file:{tmp_path / 'outbox.sqlite'}?mode=ro", uri=True)
    try:  # nothing left open in the outbox either
        assert outbox.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 0
    finally:
        outbox.close()
