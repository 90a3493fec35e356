"""Sinks never hold each other back: one refuses a record for good, one is down for 20 s, and
the file sink keeps its pace; nothing is lost or written twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire.events import AgentEvent
from tests.agentkit import stop
from tests.bridgekit import (
    WEBHOOK_SECRET,
    WebhookReceiver,
    bridge_config,
    bridge_ready,
    read_jsonl,
    start_bridge,
)
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
EVENTS = 30
DOWN_S = 20.0


def test_a_refusing_sink_and_a_down_sink_hold_back_no_other(
    broker: RunningBroker, tmp_path: Path
) -> None:
    refusing = WebhookReceiver(refuse=b"refuse-me")
    down = WebhookReceiver()
    refusing.up()
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    secret = tmp_path / "secret"
    secret.write_text(WEBHOOK_SECRET + "\n")

    def desk(name: str, url: str) -> str:
        return (
            f"  {name}: {{type: webhook, url: '{url}', secret_file: '{secret}', "
            f"dead_letter: '{tmp_path / ('dead-' + name)}', retry_min_s: 0.2, retry_max_s: 2, "
            "max_elapsed_s: 300}\n"
        )

    text = config.read_text().replace(
        "sinks:\n", "sinks:\n" + desk("a", refusing.url) + desk("b", down.url), 1
    )
    config.write_text(text.replace("events: [files]", "events: [files, a, b]"))
    bridge = start_bridge(config, tmp_path / "bridge.log")
    car = VirtualDevice.from_pki(broker.certs, "car-1")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        conn = broker.connect("device", "car-1")
        conn.publish(car.topic("status"), car.birth(), retain=True).result(5)
        started = time.monotonic()
        for i in range(EVENTS):
            note = "refuse-me" if i == 7 else f"ok-{i}"
            event = AgentEvent(t_ms=1_700_000_000_000 + i, what="test", detail=note)
            conn.publish(car.topic("events"), car.events([event])).result(5)
        # The file sink has everything while sink b is still down.
        wait_for(lambda: len(read_jsonl(out)) == EVENTS, timeout_s=DOWN_S - 5, what="the file")
        assert time.monotonic() - started < DOWN_S and not down.requests
        wait_for(lambda: len(refusing.keys()) == EVENTS, what="sink a tried every record")
        dead = list((tmp_path / "dead-a").glob("*.json"))
        assert len(dead) == 1 and "refuse-me" in dead[0].read_text()
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - started)))
        down.up()
        wait_for(lambda: len(set(down.keys())) == EVENTS, timeout_s=60, what="sink b catches up")
        assert len(down.keys()) == EVENTS, "sink b got a record twice"
        assert len(set(refusing.keys())) == len(refusing.keys()) == EVENTS
        keys = [r["key"] for r in read_jsonl(out)]
        assert len(set(keys)) == len(keys) == EVENTS
        assert bridge.poll() is None
    finally:
        stop(bridge)
        refusing.down()
        down.down()
