"""The bridge against a real Mosquitto, HTTP receiver and nats-server, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from functools import partial
from pathlib import Path

import msgpack
import nats
from cryptography.hazmat.primitives.asymmetric import ec
from nats.js.errors import NotFoundError

from canvoy.bridge.quarantine import verify_chain
from canvoy.bridge.records import Record
from canvoy.bridge.sinks.nats import NatsConfig, NatsSink
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.transport.mqtt import Connection
from canvoy.wire.events import DtcEvent
from tests.agentkit import stop
from tests.bridgekit import (
    NatsServer,
    WebhookReceiver,
    bridge_config,
    bridge_ready,
    read_jsonl,
    start_bridge,
)
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def _connect(broker: RunningBroker, dev: VirtualDevice) -> Connection:
    conn = broker.connect("device", dev.device)
    conn.publish(dev.topic("status"), dev.birth(), retain=True).result(5)
    return conn


def _series(i: int) -> dict[str, list[tuple[float, float]]]:
    return {"pt/ENGINE/EngineSpeed": [(1_700_000_000 + i, 800.0 + i)]}


def test_every_kind_of_bad_message_is_quarantined_and_good_traffic_flows(
    broker: RunningBroker, tmp_path: Path
) -> None:
    pki.revoke(broker.certs, "car-2")  # the bridge reads the CRL; the broker was not reloaded
    out = tmp_path / "out.jsonl"
    config = bridge_config(
        tmp_path / "bridge.yaml", broker, jsonl=out, extra="replay_window: 1000\n"
    )
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        car1 = VirtualDevice.from_pki(broker.certs, "car-1")
        car2 = VirtualDevice.from_pki(broker.certs, "car-2")
        conn1 = _connect(broker, car1)
        conn2 = _connect(broker, car2)  # its birth is rejected: revoked
        tele = car1.topic("telemetry")
        conn1.publish(tele, car1.telemetry(_series(1))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 1, what="first good batch")

        forger = VirtualDevice("car-1", ec.generate_private_key(ec.SECP256R1()), car1.cert_pem)
        forger.seq = 100
        stranger = VirtualDevice("car-1", car1.key, car1.cert_pem)  # right key, wrong device id
        stranger.device = "car-2"
        far = VirtualDevice("car-1", car1.key, car1.cert_pem, boot=car1.boot)
        oversize = b"\x92\xc6" + (131_100).to_bytes(4, "big") + os.urandom(131_100)
        future_version = msgpack.packb(
            [
                msgpack.packb([2, "car-1", car1.boot, 50, "telemetry", 0, "none", b""]),
                b"\x00" * 64,
            ]
        )
        bad = [
            (tele, forger.telemetry(_series(2)), "bad_signature"),
            (tele, stranger.telemetry(_series(3)), "identity_mismatch"),
            (car2.topic("telemetry"), car2.telemetry(_series(4)), "revoked"),
            (tele, b"\x93garbage", "malformed"),
            (tele, car1.telemetry(_series(5))[:40], "malformed"),
            (tele, oversize, "oversize"),
            (tele, future_version, "unknown_version"),
        ]
        for topic, payload, _reason in bad:
            conn = conn2 if topic.startswith("canvoy/v1/car-2") else conn1
            conn.publish(topic, payload).result(5)
        # Far ahead, then far behind: the second is a replay.
        far.seq = 5000
        conn1.publish(tele, far.telemetry(_series(6))).result(5)
        car1.seq = 10
        conn1.publish(tele, car1.telemetry(_series(7))).result(5)
        expected = sorted([r for _t, _p, r in bad] + ["replay"])

        quarantine = tmp_path / "quarantine-b1.jsonl"
        wait_for(lambda: len(read_jsonl(quarantine)) >= len(expected) + 1, what="quarantine")
        reasons = sorted(e["reason"] for e in read_jsonl(quarantine))
        assert reasons == sorted([*expected, "revoked"])  # car-2's birth, then its batch
        assert verify_chain(quarantine) == len(reasons)
        # Still forwarding, and nothing bad was forwarded.
        car1.seq = 6000
        conn1.publish(tele, car1.telemetry(_series(8))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 3, what="good traffic after the attack")
        assert {r["seq"] for r in read_jsonl(out)} == {1, 5001, 6001}
        assert bridge.poll() is None
    finally:
        assert stop(bridge) == 0


def test_an_unknown_device_is_held_then_rejected(broker: RunningBroker, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        car1 = VirtualDevice.from_pki(broker.certs, "car-1")
        conn = broker.connect("device", "car-1")
        conn.publish(car1.topic("telemetry"), car1.telemetry(_series(1))).result(5)
        conn.publish(car1.topic("status"), car1.birth(), retain=True).result(5)  # birth late
        wait_for(lambda: len(read_jsonl(out)) == 1, what="the held batch, once the key is known")
        car2 = VirtualDevice.from_pki(broker.certs, "car-2")
        conn2 = broker.connect("device", "car-2")
        conn2.publish(car2.topic("telemetry"), car2.telemetry(_series(1))).result(5)  # no birth
        quarantine = tmp_path / "quarantine-b1.jsonl"
        wait_for(lambda: len(read_jsonl(quarantine)) == 1, timeout_s=15, what="hold expiry")
        assert read_jsonl(quarantine)[0]["reason"] == "unknown_device"
    finally:
        assert stop(bridge) == 0


def test_a_webhook_down_for_20_s_gets_every_event(
    broker: RunningBroker, tmp_path: Path, webhook: WebhookReceiver
) -> None:
    config = bridge_config(tmp_path / "bridge.yaml", broker, webhook=webhook.url)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        car1 = VirtualDevice.from_pki(broker.certs, "car-1")
        conn = _connect(broker, car1)

        def send(i: int) -> None:
            event = DtcEvent(t_ms=i, code=f"P0{i:03}", state="set", source="dbc", signal="pt/D")
            conn.publish(car1.topic("events"), car1.events([event])).result(5)

        send(1)
        wait_for(lambda: len(webhook.requests) == 1, what="first event")
        webhook.down()
        for i in range(2, 12):
            send(i)
        down = time.monotonic()
        wait_for(lambda: time.monotonic() - down >= 20, timeout_s=25, what="20 s outage")
        assert len(webhook.requests) == 1
        webhook.up()
        wait_for(lambda: len(set(webhook.keys())) == 11, timeout_s=60, what="every event")
        codes = {r.json["event"]["code"] for r in webhook.requests}
        assert codes == {f"P0{i:03}" for i in range(1, 12)}
        assert all(r.verified for r in webhook.requests)  # standardwebhooks accepted each
        by_key: dict[str, bytes] = {}
        for r in webhook.requests:  # a repeat carries the same key and the same body
            assert by_key.setdefault(r.headers["Idempotency-Key"], r.body) == r.body
    finally:
        assert stop(bridge) == 0


def test_two_bridges_share_the_fleet(broker: RunningBroker, tmp_path: Path) -> None:
    pki.issue(broker.certs, "bridge", "b2")
    broker.broker.reload()
    configs = [
        bridge_config(tmp_path / f"{n}.yaml", broker, name=n, jsonl=tmp_path / f"{n}.jsonl")
        for n in ("b1", "b2")
    ]
    bridges = [start_bridge(c, tmp_path / f"{c.stem}.log") for c in configs]
    try:
        for c in configs:
            wait_for(partial(bridge_ready, c, c.stem), what=f"{c.stem} connected")
        devices = [VirtualDevice.from_pki(broker.certs, d) for d in ("car-1", "car-2")]
        conns = [_connect(broker, d) for d in devices]
        for i in range(100):
            for dev, conn in zip(devices, conns, strict=True):
                conn.publish(dev.topic("telemetry"), dev.telemetry(_series(i)))

        def keys() -> list[str]:
            return [r["key"] for n in ("b1", "b2") for r in read_jsonl(tmp_path / f"{n}.jsonl")]

        wait_for(lambda: len(set(keys())) == 200, timeout_s=30, what="200 batches forwarded")
        assert len(keys()) == 200  # each forwarded once
        per_bridge = [len(read_jsonl(tmp_path / f"{n}.jsonl")) for n in ("b1", "b2")]
        assert min(per_bridge) > 0, per_bridge  # both carried load
    finally:
        for b in bridges:
            assert stop(b) == 0


def test_a_sigkilled_bridge_loses_nothing(broker: RunningBroker, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    car1 = VirtualDevice.from_pki(broker.certs, "car-1")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        conn = _connect(broker, car1)
        for i in range(300):
            conn.publish(car1.topic("telemetry"), car1.telemetry(_series(i))).result(5)
            if i == 150:
                stop(bridge, signal.SIGKILL)
        (tmp_path / "status-b1.json").unlink()
        bridge = start_bridge(config, tmp_path / "bridge.log")
        wait_for(
            lambda: {r["seq"] for r in read_jsonl(out)} >= set(range(1, 301)),
            timeout_s=60,
            what="all 300 batches",
        )
    finally:
        assert stop(bridge) == 0


def test_nats_jetstream_keeps_one_copy_per_key(
    broker: RunningBroker, tmp_path: Path, nats_server: NatsServer
) -> None:
    config = bridge_config(tmp_path / "bridge.yaml", broker, nats=nats_server.url)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        car1 = VirtualDevice.from_pki(broker.certs, "car-1")
        conn = _connect(broker, car1)
        payloads = [car1.telemetry(_series(i)) for i in range(5)]
        for p in [*payloads, payloads[2]]:  # one redelivered by hand (QoS 1 duplicate)
            conn.publish(car1.topic("telemetry"), p).result(5)

        async def count() -> int:
            nc = await nats.connect(nats_server.url)
            try:
                info = await nc.jetstream().stream_info("CANVOY")
                return int(info.state.messages)
            except NotFoundError:
                return 0  # the bridge creates the stream with its first delivery
            finally:
                await nc.close()

        wait_for(lambda: asyncio.run(count()) == 5, what="5 messages in the stream")
        # A record delivered again (another bridge instance, a redelivery) is stored once.
        sink = NatsSink("again", NatsConfig(url=nats_server.url))
        again = Record(f"car-1:{car1.boot.hex()}:3", "car-1", "telemetry", {"seq": 3})
        sink.deliver([again])
        sink.close()
        assert sink.duplicates == 1
        assert asyncio.run(count()) == 5
    finally:
        assert stop(bridge) == 0
