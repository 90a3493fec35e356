"""Hostile confirmations from a bridge identity, as the field could send them: ignored, counted,
and the agent's link, its outbox and the next real bridge's confirmations are unharmed."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import msgpack
import pytest

from canvoy.agent.outbox import OutboxStatus, open_status
from canvoy.certs import pki
from canvoy.errors import ConnectionLostError, StoreError
from canvoy.transport.mqtt import Connection
from canvoy.wire.envelope import MAX_SEQ
from tests.agentkit import agent_config, drive_log, start_agent, stop
from tests.bridgekit import bridge_config, bridge_ready, read_jsonl, start_bridge
from tests.conftest import RunningBroker
from tests.linkproxy import LinkProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
DELIVERY = "{mode: bridge, confirm_timeout_s: 2, republish_max_s: 4}"
RECEIPTS = "canvoy/v1/car-1/receipts"


def _outbox(tmp_path: Path) -> OutboxStatus:
    return open_status(tmp_path / "car-1-outbox.sqlite")


def _acked(tmp_path: Path) -> int:
    try:
        return _outbox(tmp_path).counters.get("acked", 0)
    except StoreError:  # not created yet
        return 0


def _confirmation(keys: list[str], confirmed: list[dict[str, object]]) -> bytes:
    return json.dumps({"keys": keys, "delivered_ms": 1, "confirmed": confirmed}).encode()


def _hostile(boot: str) -> list[bytes]:
    """What a bridge's key could put on a device's receipts topic without deleting anything:
    malformed payloads, and well-formed ones naming keys and boots that are not the agent's."""
    other = os.urandom(16).hex()
    return [  # the well-formed first: once the last malformed one is logged, all were read
        _confirmation([], [{"boot": other, "ranges": [[0, MAX_SEQ]]}] * 16),  # another boot
        _confirmation([f"car-1:{boot}:\u00b2", f"car-1:{boot}:{'9' * 40}"], []),
        _confirmation([f"car-1:{boot}:{'9' * 19}", f"car-2:{boot}:1", "x" * 128], []),
        b"[" * 50_000 + b"]" * 50_000,  # over the size bound
        b"[" * 30_000 + b"]" * 30_000,  # within it, and deeper than any parser recurses
        msgpack.packb({"keys": [], "delivered_ms": 1, "confirmed": []}),
        _confirmation([], [{"boot": boot, "ranges": [[5, 2]]}]),
        _confirmation([], [{"boot": boot, "ranges": [[-1, 3]]}]),
        _confirmation([], [{"boot": boot, "ranges": [[1, MAX_SEQ + 1]]}]),
    ]


def test_hostile_confirmations_neither_delete_nor_stop_the_agent(
    broker: RunningBroker, tmp_path: Path
) -> None:
    pki.issue(broker.certs, "bridge", "b9")  # a second bridge identity, the forger
    broker.broker.reload()
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 60),
        speed="x4",
        delivery=DELIVERY,
    )
    agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = None
    try:
        wait_for(lambda: _acked(tmp_path) >= 2, 30, "the agent publishing")
        with sqlite3.connect(tmp_path / "car-1-outbox.sqlite") as db:
            # The running boot, what a forger would aim at.
            boot = db.execute("SELECT lower(hex(boot)) FROM outbox LIMIT 1").fetchone()[0]
        hostile = broker.connect("bridge", "b9")
        payloads = _hostile(boot)
        for payload in payloads:
            hostile.publish(RECEIPTS, payload).result(5)
        log = tmp_path / "agent.log"
        wait_for(
            lambda: log.read_text().count("ignoring a malformed confirmation") >= 6,
            30,
            "the agent to read every hostile confirmation",
        )
        assert _outbox(tmp_path).counters["confirmed"] == 0
        # A real bridge now: its confirmations arrive on the same session and are honoured.
        bridge = start_bridge(config, tmp_path / "bridge.log")
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        assert agent.wait(120) == 0
        outbox = _outbox(tmp_path)
        last = outbox.counters["next_seq"] - 1
        assert (outbox.depth, outbox.counters["confirmed"]) == (0, last)
        assert {int(r["seq"]) for r in read_jsonl(out)} >= set(range(1, last + 1))
        assert "Traceback" not in log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
        if bridge is not None:
            stop(bridge)


def test_a_link_dead_between_connack_and_suback_is_a_lost_connection(
    broker: RunningBroker,
) -> None:
    # The agent subscribes to its receipts right after CONNACK. A bare TimeoutError there was
    # not a TransportError, so the publisher's retry let it through and its thread ended: the
    # agent went on collecting and never published again.
    proxy = LinkProxy(broker.port)
    try:
        conn = Connection(client_id="car-1", tls=broker.tls("device", "car-1"))
        conn.connect("127.0.0.1", proxy.port)
        proxy.cut()
        with pytest.raises(ConnectionLostError, match="no SUBACK"):
            conn.subscribe([(RECEIPTS, 1)], timeout_s=0.5)
        conn.close(timeout_s=0.1)
    finally:
        proxy.close()


def test_two_bridges_with_one_identity_say_so_and_stop_taking_turns(
    broker: RunningBroker, tmp_path: Path
) -> None:
    # The same bridge.yaml deployed on two hosts: each connection takes the session of the
    # other. Before, they reconnected at once and did so several times a second (over 200
    # takeovers in this run) with no word of why.
    bridges, logs = [], []
    for host in ("h1", "h2"):
        (tmp_path / host).mkdir()
        config = bridge_config(
            tmp_path / host / "b.yaml", broker, jsonl=tmp_path / host / "o.jsonl"
        )
        logs.append(tmp_path / host / "b.log")
        bridges.append(start_bridge(config, logs[-1]))
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "d.blf", 120),
        speed="x4",
        delivery=DELIVERY,
    )
    agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
    try:
        wait_for(
            lambda: any("another bridge runs with the same name" in p.read_text() for p in logs),
            60,
            "a bridge to name the cause",
        )
        assert agent.wait(180) == 0
        outbox = _outbox(tmp_path)
        assert (outbox.depth, outbox.counters["confirmed"]) == (0, outbox.counters["next_seq"] - 1)
        seqs = {int(r["seq"]) for h in ("h1", "h2") for r in read_jsonl(tmp_path / h / "o.jsonl")}
        assert seqs >= set(range(1, outbox.counters["next_seq"]))
        assert broker.log().count("already connected") < 60
    finally:
        if agent.poll() is None:
            agent.kill()
        for bridge in bridges:
            stop(bridge)
