"""Hand-crafted messages from the stock mosquitto_pub are quarantined while an agent's traffic
keeps reaching the sinks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from canvoy.agent.outbox import open_status
from canvoy.simulator.fleet import VirtualDevice
from tests.agentkit import Recorder, agent_config, drive_log, start_agent, stop
from tests.bridgekit import bridge_config, bridge_ready, read_jsonl, start_bridge
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_pub") is None, reason="mosquitto-clients is not installed"
)


def _pub(broker: RunningBroker, payload: Path) -> None:
    folder = broker.certs / "device" / "car-1"
    done = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-V",
            "mqttv5",
            "-i",
            "car-1-by-hand",
            "--cafile",
            str(broker.certs / "ca.pem"),
            "--cert",
            str(folder / "cert.pem"),
            "--key",
            str(folder / "key.pem"),
            "-t",
            "canvoy/v1/car-1/telemetry",
            "-f",
            str(payload),
            "-q",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_stock_client_forgeries_are_quarantined_while_the_agent_flows(
    broker: RunningBroker, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    recorder = Recorder(broker)
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 60),
        speed="x4",
        # Publishing "old" by hand with the device's identity takes over its client id and
        # session, so a confirmation can be lost: the agent republishes it after 2 s.
        delivery="{mode: bridge, confirm_timeout_s: 2}",
    )
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
        wait_for(lambda: len(recorder.seqs) >= 2, timeout_s=30, what="the agent's first batches")
        crafted = {
            "garbage": b"\x00not an envelope\xff",
            "old": recorder.payloads[recorder.seqs[0]][0],  # re-sent by hand
            "other": VirtualDevice.from_pki(broker.certs, "car-2").telemetry(
                {"pt/ENGINE/EngineSpeed": [(1_700_000_000.0, 900.0)]}
            ),
        }
        for name, payload in crafted.items():
            path = tmp_path / f"{name}.bin"
            path.write_bytes(payload)
            _pub(broker, path)
        assert agent.wait(120) == 0
        outbox = open_status(tmp_path / "car-1-outbox.sqlite")
        assert (outbox.depth, outbox.unconfirmed.count) == (0, 0)  # every one confirmed
        last = outbox.counters["next_seq"] - 1
        assert outbox.counters["confirmed"] == last
        wait_for(
            lambda: {r["seq"] for r in read_jsonl(out)} >= set(range(1, last + 1)),
            timeout_s=30,
            what="every agent batch at the sink",
        )
        forwarded = read_jsonl(out)
        assert len(forwarded) == last  # nothing crafted was forwarded
        assert all(r["device"] == "car-1" for r in forwarded)
        # A status that is not the newest is noted too (a retained birth and a live one can
        # cross); the crafted telemetry is what this is about.
        noted = read_jsonl(tmp_path / "quarantine-b1.jsonl")
        reasons = sorted(r["reason"] for r in noted if r["topic"].endswith("/telemetry"))
        assert (reasons.count("identity_mismatch"), reasons.count("malformed")) == (1, 1)
        assert set(reasons) == {"duplicate", "identity_mismatch", "malformed"}
    finally:
        recorder.close()
        assert stop(bridge) == 0
