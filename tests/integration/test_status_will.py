"""A SIGKILLed agent's last will reaches the bridge's sinks as its newest status."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.agentkit import agent_config, drive_log, start_agent, stop
from tests.bridgekit import bridge_config, bridge_ready, read_jsonl, start_bridge
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def _states(path: Path) -> list[tuple[str, bool]]:
    return [(r["state"], bool(r["lost"])) for r in read_jsonl(path) if r.get("kind") == "status"]


@pytest.mark.integration
def test_a_killed_agents_will_is_forwarded_after_its_birth(
    broker: RunningBroker, tmp_path: Path
) -> None:
    files = tmp_path / "records.jsonl"
    config = bridge_config(
        tmp_path / "bridge.yaml", broker, jsonl=files, extra="  status: [files]\n"
    )
    bridge = start_bridge(config, tmp_path / "bridge.log")
    log = drive_log(tmp_path / "drive.blf", 30)
    agent_yaml = agent_config(
        tmp_path / "agent.yaml", broker, replay=log, speed="realtime", delivery="bridge"
    )
    try:
        wait_for(lambda: bridge_ready(config), timeout_s=30, what="bridge connected")
        agent = start_agent(agent_yaml, tmp_path / "agent.log")
        wait_for(lambda: ("online", False) in _states(files), timeout_s=30, what="the birth")
        assert stop(agent, signal.SIGKILL) == -signal.SIGKILL
        wait_for(
            lambda: ("offline", True) in _states(files),
            timeout_s=30,
            what="the last will forwarded (keepalive 1.5 x 30 s is not waited: the socket closes)",
        )
        # The services log their lifecycle at INFO by default (no -v given).
        assert "connected to 127.0.0.1" in (tmp_path / "agent.log").read_text()
        assert "subscribed to" in (tmp_path / "bridge.log").read_text()
        states = _states(files)
        assert states.index(("offline", True)) > states.index(("online", False))
    finally:
        stop(bridge)
