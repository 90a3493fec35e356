"""delivery: bridge end to end: broker restarts and crashes and a killed bridge lose nothing.

Mosquitto 2.0 does not restore ``$share`` subscriptions from its persistence file, so whatever
an agent publishes between a broker restart and the bridges' next subscription goes to no one;
a SIGKILL also loses what the broker acknowledged but had not saved. Only the confirmation by a
bridge, and the agent's republishing of what was not confirmed, bring those envelopes through.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from canvoy.agent.outbox import OutboxStatus, open_status
from canvoy.certs import pki
from canvoy.errors import PublishRefusedError
from tests.agentkit import agent_config, drive_log, start_agent, stop
from tests.bridgekit import (
    WEBHOOK_SECRET,
    WebhookReceiver,
    bridge_config,
    bridge_ready,
    read_jsonl,
    start_bridge,
    webhook,
)
from tests.conftest import RunningBroker
from tests.waiting import wait_for

__all__ = ["webhook"]  # the fixture
pytestmark = pytest.mark.integration
DELIVERY = "{mode: bridge, confirm_timeout_s: 2, republish_max_s: 4}"


def _outbox(tmp_path: Path) -> OutboxStatus:
    return open_status(tmp_path / "car-1-outbox.sqlite")


def _grown(tmp_path: Path, counter: str, by: int) -> None:
    start = _outbox(tmp_path).counters[counter]
    wait_for(
        lambda: _outbox(tmp_path).counters[counter] >= start + by,
        timeout_s=30,
        what=f"{counter} to grow by {by}",
    )


def _seqs(*files: Path) -> set[int]:
    return {int(r["seq"]) for f in files for r in read_jsonl(f)}


@pytest.mark.parametrize("crash", [False, True], ids=["clean-restart", "sigkill"])
def test_a_broker_restart_or_crash_with_the_bridges_offline_loses_nothing(
    broker: RunningBroker, tmp_path: Path, crash: bool
) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    wait_for(lambda: bridge_ready(config), what="bridge connected")
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 160),
        speed="x4",
        delivery=DELIVERY,
    )
    agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
    try:
        wait_for(lambda: out.exists() and _outbox(tmp_path).counters["confirmed"] >= 2, 30)
        assert stop(bridge) == 0  # the bridges are offline from here on
        _grown(tmp_path, "acked", 2)  # acknowledged by the broker, queued for the bridge
        acked_at_ms = _outbox(tmp_path).counters["last_ack_ms"]
        if crash:
            broker.broker.kill()
            assert time.time() * 1000 - acked_at_ms < 30_000  # inside the old 30 s autosave
        else:
            broker.broker.stop()
        with broker.log_path.open("ab") as log:
            broker.broker.start(log=log)
        # Published after the restart with no shared subscription in place: to no one.
        _grown(tmp_path, "acked", 2)
        bridge = start_bridge(config, tmp_path / "bridge.log")
        assert agent.wait(180) == 0
        outbox = _outbox(tmp_path)
        last = outbox.counters["next_seq"] - 1
        assert (outbox.depth, outbox.unconfirmed.count) == (0, 0)
        assert outbox.counters["confirmed"] == last
        assert outbox.counters["acked"] > last, "nothing was published again: no gap tested"
        wait_for(lambda: _seqs(out) >= set(range(1, last + 1)), 30, "every envelope at the sink")
    finally:
        if agent.poll() is None:
            agent.kill()
        stop(bridge)


def _slow_bridge_config(path: Path, broker: RunningBroker, jsonl: Path, url: str) -> Path:
    """Bridge b1: its jsonl sink and a webhook for every record, so that a webhook that is
    down keeps b1's envelopes unconfirmed."""
    folder = pki.identity_dir(broker.certs, "bridge", "b1")
    secret = path.parent / "webhook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    path.write_text(
        f"""name: b1
tls: {{ca: "{pki.ca_cert_path(broker.certs)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
broker: {{host: 127.0.0.1, port: {broker.port}}}
quarantine: "{path.parent / "quarantine-b1.jsonl"}"
status_file: "{path.parent / "status-b1.json"}"
sinks:
  files: {{type: jsonl, path: '{jsonl}'}}
  desk: {{type: webhook, url: '{url}', secret_file: '{secret}', retry_min_s: 0.2,
          retry_max_s: 1, dead_letter: '{path.parent / "dead"}'}}
routes:
  telemetry: [files, desk]
  events: [files, desk]
"""
    )
    return path


def _held_by(state: Path, sink: str) -> int:
    try:
        db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                db.execute("SELECT count(*) FROM spool WHERE sink = ?", (sink,)).fetchone()[0]
            )
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_a_bridge_killed_holding_unconfirmed_envelopes_loses_nothing(
    broker: RunningBroker, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    pki.issue(broker.certs, "bridge", "b2")
    broker.broker.reload()
    webhook.down()
    out1, out2 = tmp_path / "out-b1.jsonl", tmp_path / "out-b2.jsonl"
    config1 = _slow_bridge_config(tmp_path / "b1.yaml", broker, out1, webhook.url)
    config2 = bridge_config(tmp_path / "b2.yaml", broker, name="b2", jsonl=out2)
    b1 = start_bridge(config1, tmp_path / "b1.log")
    b2 = start_bridge(config2, tmp_path / "b2.log")
    wait_for(lambda: bridge_ready(config1, "b1") and bridge_ready(config2, "b2"), 20)
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 100),
        speed="x4",
        delivery=DELIVERY,
    )
    agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
    state1 = tmp_path / "b1.state.sqlite"
    try:
        wait_for(lambda: _held_by(state1, "desk") >= 2, 30, "b1 to hold envelopes")
        assert stop(b1, signal.SIGKILL) == -signal.SIGKILL
        held = _seqs(out1) - _seqs(out2)
        assert held, "b1 forwarded nothing of its own to its files: nothing held to test"
        # Republished after 2 s, they reach b2 (or wait in b1's session for its return).
        _grown(tmp_path, "confirmed", 2)
        webhook.up()
        b1 = start_bridge(config1, tmp_path / "b1.log")
        assert agent.wait(180) == 0
        outbox = _outbox(tmp_path)
        last = outbox.counters["next_seq"] - 1
        assert (outbox.depth, outbox.counters["confirmed"]) == (0, last)
        wait_for(lambda: _seqs(out1, out2) >= set(range(1, last + 1)), 30, "every envelope")
        wait_for(lambda: _held_by(state1, "desk") == 0, 30, "b1's webhook spool to drain")
    finally:
        if agent.poll() is None:
            agent.kill()
        stop(b1)
        stop(b2)


@pytest.mark.parametrize(
    ("kind", "name", "receipts"),
    [
        ("device", "car-1", "canvoy/v1/car-1/receipts"),  # its own: it could confirm itself
        ("device", "car-1", "canvoy/v1/car-2/receipts"),
        ("operator", "ops", "canvoy/v1/car-1/receipts"),
    ],
)
def test_only_a_bridge_may_publish_a_confirmation(
    broker: RunningBroker, kind: pki.IdentityKind, name: str, receipts: str
) -> None:
    conn = broker.connect(kind, name)
    with pytest.raises(PublishRefusedError, match="Not authorized"):
        conn.publish(receipts, b'{"keys": [], "delivered_ms": 1, "confirmed": []}').result(5)
    broker.connect("bridge", "b1").publish(receipts, b"{}").result(5)


def test_agent_sigkilled_at_random_moments_with_delivery_bridge_loses_nothing(
    broker: RunningBroker, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    wait_for(lambda: bridge_ready(config), what="bridge connected")
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 60),
        speed="x6",
        delivery=DELIVERY,
    )
    seed = int(os.environ.get("CANVOY_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    try:
        for _ in range(5):
            agent = start_agent(agent_yaml, tmp_path / "agent.log")
            time.sleep(rng.uniform(1.0, 5.0))  # a random moment, not a synchronisation
            assert stop(agent, signal.SIGKILL) == -signal.SIGKILL
        agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
        assert agent.wait(120) == 0, f"seed {seed}"
        outbox = _outbox(tmp_path)
        last = outbox.counters["next_seq"] - 1
        assert (outbox.depth, outbox.counters["confirmed"]) == (0, last), f"seed {seed}"
        wait_for(lambda: _seqs(out) >= set(range(1, last + 1)), 30, f"every envelope, seed {seed}")
    finally:
        stop(bridge)
