"""The configs ``init`` writes, at full speed: a default agent with no policy sends batches whose
records are far larger than the fleet topic takes; the bridge splits them and never wedges."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.agent.outbox import open_status
from canvoy.dbc import DEMO_DBC, DEMO_HV_DBC, copy
from canvoy.transport.mqtt import Message
from tests.agentkit import stop
from tests.bridgekit import read_jsonl
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _canvoy(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_default_agent_at_full_speed_through_the_default_bridge(
    broker: RunningBroker, tmp_path: Path
) -> None:
    certs, address = str(broker.certs), f"127.0.0.1:{broker.port}"
    _canvoy("sim", "record", "--duration", "600", "-o", "drive.blf", cwd=tmp_path)
    dbcs = [str(copy(n, tmp_path)) for n in (DEMO_DBC, DEMO_HV_DBC)]
    out = tmp_path / "records.jsonl"
    _canvoy(
        "bridge",
        "init",
        "--certs",
        certs,
        "--identity",
        "bridge/b1",
        "--broker",
        address,
        "--jsonl",
        str(out),
        "-o",
        "bridge.yaml",
        cwd=tmp_path,
    )
    _canvoy(
        "agent",
        "init",
        "--device",
        "car-1",
        "--certs",
        certs,
        "--broker",
        address,
        "--dbc",
        dbcs[0],
        "--dbc",
        dbcs[1],
        "--replay",
        "drive.blf",
        "--speed",
        "max",
        "-o",
        "agent.yaml",
        cwd=tmp_path,
    )
    fleet: list[Message] = []
    ops = broker.connect("operator", "ops", received=fleet)
    ops.subscribe([("fleet/v1/#", 1)])
    cmd = [sys.executable, "-m", "canvoy", "-v"]
    with (tmp_path / "bridge.log").open("wb") as log:
        bridge = subprocess.Popen(
            [*cmd, "bridge", "run", "--config", "bridge.yaml"], stdout=log, stderr=log, cwd=tmp_path
        )
    try:
        wait_for(lambda: "subscribed" in (tmp_path / "bridge.log").read_text(), what="bridge")
        agent = subprocess.run(
            [*cmd, "agent", "run", "--config", "agent.yaml", "--exit-when-done"],
            capture_output=True,
            cwd=tmp_path,
            timeout=240,
            check=False,
        )
        assert agent.returncode == 0, agent.stderr[-2000:]
        outbox = next(tmp_path.glob("*.sqlite"))
        sealed = open_status(outbox).counters["next_seq"] - 1
        assert sealed > 10
        wanted = set(range(1, sealed + 1))
        wait_for(
            lambda: (
                {r["seq"] for r in read_jsonl(out) if r["kind"] == "telemetry"}
                | {r["seq"] for r in read_jsonl(out) if r["kind"] == "events"}
                >= wanted
            ),
            timeout_s=60,
            what="every sequence number in the file",
        )
        keys = [r["key"] for r in read_jsonl(out)]
        assert len(keys) == len(set(keys)), "a record was written twice"
        per_envelope = {r["envelope"] for r in read_jsonl(out)}
        assert {int(k.rsplit(":", 1)[1]) for k in per_envelope} >= wanted
        assert fleet and all(len(m.payload) <= 128 * 1024 for m in fleet)
        assert any(b'"parts"' in m.payload for m in fleet), "no batch was large enough to split"
        assert "oversize" not in broker.log()
        assert bridge.poll() is None
    finally:
        ops.close()
        assert stop(bridge) == 0
