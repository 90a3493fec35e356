"""The agent polls the simulated OBD-II ECU on a live (virtual) bus; readings reach the broker."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import can

from canvoy.agent.config import load_config
from canvoy.agent.service import Agent
from canvoy.certs import pki
from canvoy.simulator.model import Vehicle
from canvoy.simulator.obd import ObdEcu
from canvoy.wire import body
from canvoy.wire.events import AgentEvent, parse_events
from tests.agentkit import TEST_DBC, Recorder
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def test_obd_pids_and_dtcs_reach_the_broker(broker: RunningBroker, tmp_path: Path) -> None:
    channel = f"canvoy-obd-agent-{random.randrange(1 << 30)}"
    folder = pki.identity_dir(broker.certs, "device", "car-1")
    config = tmp_path / "agent.yaml"
    config.write_text(f"""device: car-1
tls: {{ca: "{pki.ca_cert_path(broker.certs)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
buses:
  - name: obd
    databases: ["{TEST_DBC}"]
    interface: virtual
    channel: {channel}
    obd: {{pids: {{"0C": 0.2, "05": 0.2}}, dtc_interval_s: 0.5, timeout_s: 1.0}}
outbox: {{path: "{tmp_path / "outbox.sqlite"}"}}
batch: {{max_interval_s: 0.2}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
""")
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    vehicle = Vehicle(rng=random.Random(1), rpm=3000.0, coolant=121.0)
    vehicle.dtcs = ["P0217"]
    ecu = ObdEcu(ecu_bus, vehicle)
    ecu.start()
    recorder = Recorder(broker)
    agent = Agent(load_config(config))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()

    def seen() -> tuple[set[str], list[tuple[str, str]]]:
        keys: set[str] = set()
        codes: list[tuple[str, str]] = []
        for signed in list(recorder.envelopes):
            e = signed.envelope
            content = body.decode(e.encoding, e.body)
            if e.kind == "telemetry":
                keys |= {s.key for s in body.parse_telemetry(content).series}
            else:
                codes += [
                    (x.code, x.state)
                    for x in parse_events(content)
                    if not isinstance(x, AgentEvent)
                ]
        return keys, codes

    try:
        wait_for(lambda: ("P0217", "set") in seen()[1], timeout_s=30, what="the OBD DTC event")
        wait_for(
            lambda: {"obd/OBD_7E8/EngineSpeed", "obd/OBD_7E8/CoolantTemp"} <= seen()[0],
            timeout_s=30,
            what="OBD PIDs as telemetry",
        )
    finally:
        agent.stop()
        runner.join(30)
        ecu.stop()
        ecu_bus.shutdown()
        recorder.close()
