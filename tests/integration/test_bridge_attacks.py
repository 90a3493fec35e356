"""What an attacker with a real device key, or one very large honest batch, does to a running
bridge: nothing reaches a sink that should not, the bridge stays up, other devices flow."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire import body
from tests.agentkit import stop
from tests.bridgekit import bridge_config, bridge_ready, read_jsonl, start_bridge
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _online(broker: RunningBroker, dev: VirtualDevice) -> Connection:
    conn = broker.connect("device", dev.device)
    conn.publish(dev.topic("status"), dev.birth(), retain=True).result(5)
    return conn


def _raw(
    dev: VirtualDevice,
    kind: str,
    raw_body: bytes,
    encoding: str = "none",
    *,
    seq: int | None = None,
    created_ms: int | None = None,
) -> bytes:
    """An envelope of ``raw_body`` bytes, signed with the device's real key; its fields are
    packed by hand, so that values ``Envelope`` itself refuses can be sent too."""
    if seq is None:
        dev.seq += 1
    fields = [
        1,
        dev.device,
        dev.boot,
        dev.seq if seq is None else seq,
        kind,
        int(time.time() * 1000) if created_ms is None else created_ms,
        encoding,
        raw_body,
    ]
    signed = bytes(msgpack.packb(fields, use_bin_type=True))
    r, s = decode_dss_signature(dev.key.sign(signed, ec.ECDSA(hashes.SHA256())))
    return bytes(msgpack.packb([signed, r.to_bytes(32, "big") + s.to_bytes(32, "big")]))


def _nested_events(depth: int) -> bytes:
    """An events body whose unknown field ``x`` nests ``depth`` arrays deep (msgpack by hand)."""
    plain = bytes(msgpack.packb({"events": [{"type": "dtc", "t_ms": 1, "x": 0}]}))
    assert plain.endswith(b"\xa1x\x00")
    return plain[:-1] + b"\x91" * depth + b"\x00"


def _series(i: int, n: int = 1) -> dict[str, list[tuple[float, float]]]:
    return {"pt/ENGINE/EngineSpeed": [(1_700_000_000 + i + k / 1000, 800.0 + k) for k in range(n)]}


def _children(pid: int) -> set[int]:
    """Every process whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _fleet_config(tmp_path: Path, broker: RunningBroker, out: Path, extra: str = "") -> Path:
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out, extra=extra)
    text = config.read_text().replace("sinks:\n", "sinks:\n  fleet: {type: mqtt}\n", 1)
    text = text.replace("telemetry: [files]", "telemetry: [files, fleet]")
    text = text.replace("events: [files]", "events: [files, fleet]")
    config.write_text(text + "verify_workers: 2\n")
    return config


def _attack_car1(broker: RunningBroker, conn1: Connection, car1: VirtualDevice) -> None:
    """Findings 2, 3 and 4 of the bridge issue, each signed with car-1's real key."""
    tele1 = car1.topic("telemetry")
    # 2. Deep nesting from a known device (verified in a worker).
    conn1.publish(car1.topic("events"), _raw(car1, "events", _nested_events(600))).result(5)
    # 3. A tiny payload that inflates: two series of 999,000 samples.
    columns = {f"k{i}": ([0] * 999_000, [0] * 999_000) for i in range(2)}
    content = {
        "policy": "0" * 64,
        "t0": 0,
        "series": [[k, t, v] for k, (t, v) in columns.items()],
    }
    raw = msgpack.packb(content)
    bomb = zstandard.ZstdCompressor(level=19).compress(raw)
    assert len(bomb) < 4096
    conn1.publish(tele1, _raw(car1, "telemetry", bomb, "zstd")).result(5)
    # 4. Another device's revoked certificate, with a zero signature, on car-1's topic.
    pki.issue(broker.certs, "device", "car-9")
    pki.revoke(broker.certs, "car-9")
    car9 = VirtualDevice.from_pki(broker.certs, "car-9")
    forged = VirtualDevice("car-1", car1.key, car9.cert_pem)
    payload = msgpack.unpackb(forged.birth())
    conn1.publish(car1.topic("status"), msgpack.packb([payload[0], b"\x00" * 64])).result(5)


def test_hostile_authentic_messages_reach_no_sink_and_the_fleet_flows(
    broker: RunningBroker, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    config = _fleet_config(tmp_path, broker, out)
    fleet: list[Message] = []
    ops = broker.connect("operator", "ops", received=fleet)
    ops.subscribe([("fleet/v1/#", 1)])
    bridge = start_bridge(config, tmp_path / "bridge.log")
    car1 = VirtualDevice.from_pki(broker.certs, "car-1")
    car2 = VirtualDevice.from_pki(broker.certs, "car-2")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        conn1 = _online(broker, car1)
        # 2b. Nested 1,000 deep from a device whose birth arrives after it (main process).
        conn2 = broker.connect("device", "car-2")
        unborn = VirtualDevice.from_pki(broker.certs, "car-2")
        unborn.boot = os.urandom(16)
        conn2.publish(car2.topic("events"), _raw(unborn, "events", _nested_events(1000))).result(5)
        conn2.publish(car2.topic("status"), car2.birth(), retain=True).result(5)
        tele1, tele2 = car1.topic("telemetry"), car2.topic("telemetry")
        conn2.publish(tele2, car2.telemetry(_series(0))).result(5)
        # 1. One large, valid batch: its JSON record is far over the fleet topic's limit.
        big = {f"pt/ENGINE/S{i}": _series(i, 600)["pt/ENGINE/EngineSpeed"] for i in range(20)}
        conn1.publish(tele1, car1.telemetry(big)).result(5)
        _attack_car1(broker, conn1, car1)
        # Authentic traffic after all of it, from both devices.
        conn1.publish(tele1, car1.telemetry(_series(1))).result(5)
        conn2.publish(tele2, car2.telemetry(_series(2))).result(5)
        wait_for(lambda: len(read_jsonl(out)) >= 4, timeout_s=30, what="good traffic")
        got = sorted((r["device"], r["seq"]) for r in read_jsonl(out))
        assert got == [("car-1", 1), ("car-1", 4), ("car-2", 1), ("car-2", 2)]
        reasons = sorted(e["reason"] for e in read_jsonl(tmp_path / "quarantine-b1.jsonl"))
        assert reasons.count("malformed") == 3, reasons  # both nestings and the inflation
        assert "identity_mismatch" in reasons  # car-9's certificate on car-1's topic
        # The fleet feed got the large batch in parts, each within the broker's limit.
        wait_for(lambda: any(m.topic.endswith("car-2/telemetry") for m in fleet), what="feed")
        wait_for(
            lambda: len([m for m in fleet if m.topic == "fleet/v1/car-1/telemetry"]) > 2,
            what="the large batch on the fleet feed",
        )
        parts = [json.loads(m.payload) for m in fleet if m.topic == "fleet/v1/car-1/telemetry"]
        assert all(len(m.payload) <= 128 * 1024 for m in fleet)
        big_parts = [p for p in parts if p["seq"] == 1]
        assert {p["parts"] for p in big_parts} == {len(big_parts)} and len(big_parts) > 1
        assert sum(p["samples"] for p in big_parts) == 12_000
        assert bridge.poll() is None
        assert "oversize packet" not in broker.log()
        assert "Traceback" not in (tmp_path / "bridge.log").read_text()
        # Restart: the large batch is not written a second time.
        assert stop(bridge) == 0
        bridge = start_bridge(config, tmp_path / "bridge.log")
        wait_for(lambda: bridge_ready(config), what="bridge connected again")
        conn1.publish(tele1, car1.telemetry(_series(5))).result(5)
        wait_for(lambda: len(read_jsonl(out)) >= 5, what="after the restart")
        keys = [r["key"] for r in read_jsonl(out)]
        assert len(keys) == len(set(keys)) == 5
    finally:
        stop(bridge)
        ops.close()


def test_renewal_revocation_and_rollback(broker: RunningBroker, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    car1 = VirtualDevice.from_pki(broker.certs, "car-1")
    car2 = VirtualDevice.from_pki(broker.certs, "car-2")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        conn1, conn2 = _online(broker, car1), _online(broker, car2)
        old_birth = car1.birth()
        conn1.publish(car1.topic("telemetry"), car1.telemetry(_series(1))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 1, what="first batch")
        # 5. Renewal with a new key; then the old birth, replayed byte for byte.
        time.sleep(0.01)  # a later created_ms than the old birth
        pki.issue(broker.certs, "device", "car-1", force=True)
        renewed = VirtualDevice.from_pki(broker.certs, "car-1")
        renewed.boot, renewed.seq = car1.boot, car1.seq
        conn1.publish(car1.topic("status"), renewed.birth(), retain=True).result(5)
        conn1.publish(car1.topic("status"), old_birth, retain=True).result(5)
        conn1.publish(car1.topic("telemetry"), renewed.telemetry(_series(2))).result(5)
        car1.seq = renewed.seq  # the old key still verifies until it is revoked or expires
        conn1.publish(car1.topic("telemetry"), car1.telemetry(_series(3))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 3, what="both keys during the renewal")
        # 6. Revoke car-2 while the bridge runs; SIGHUP reloads the CRL.
        pki.revoke(broker.certs, "car-2")
        bridge.send_signal(signal.SIGHUP)
        wait_for(lambda: "CRL" in (tmp_path / "bridge.log").read_text(), what="CRL reloaded")
        conn2.publish(car2.topic("telemetry"), car2.telemetry(_series(4))).result(5)
        renewed.seq = car1.seq
        conn1.publish(car1.topic("telemetry"), renewed.telemetry(_series(5))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 4, what="car-1 after the revocation")
        quarantine = (tmp_path / "quarantine-b1.jsonl").read_text()
        wait_for(lambda: '"revoked"' in (tmp_path / "quarantine-b1.jsonl").read_text(), what="q")
        assert {r["device"] for r in read_jsonl(out)} == {"car-1"}
        assert bridge.poll() is None, quarantine
    finally:
        stop(bridge)


def test_a_sigkilled_bridge_leaves_no_process(broker: RunningBroker, tmp_path: Path) -> None:
    config = bridge_config(
        tmp_path / "bridge.yaml", broker, jsonl=tmp_path / "o.jsonl", extra="verify_workers: 2\n"
    )
    bridge = start_bridge(config, tmp_path / "bridge.log")
    wait_for(lambda: bridge_ready(config), what="bridge connected")
    wait_for(lambda: len(_children(bridge.pid)) >= 2, what="verify workers started")
    family = _children(bridge.pid)
    family |= {g for c in family for g in _children(c)}
    bridge.send_signal(signal.SIGKILL)
    bridge.wait(10)
    wait_for(lambda: not any(_alive(p) for p in family), timeout_s=15, what="workers gone")


def test_sigkills_during_a_backlog_forward_each_record_once(
    broker: RunningBroker, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CANVOY_TEST_SEED", time.time_ns() % 10_000))
    print(f"CANVOY_TEST_SEED={seed}")
    rng = random.Random(seed)
    out = tmp_path / "out.jsonl"
    config = bridge_config(tmp_path / "bridge.yaml", broker, jsonl=out)
    bridge = start_bridge(config, tmp_path / "bridge.log")
    wait_for(lambda: bridge_ready(config), what="bridge connected")
    assert stop(bridge) == 0  # its session stays on the broker and collects the backlog
    car = VirtualDevice.from_pki(broker.certs, "car-1")
    conn = _online(broker, car)
    total = 1500
    futures = [
        conn.publish(car.topic("telemetry"), car.telemetry(_series(i))) for i in range(total)
    ]
    for fut in futures:
        fut.result(30)
    for _ in range(5):
        bridge = start_bridge(config, tmp_path / "bridge.log")
        time.sleep(rng.uniform(0.3, 2.0))
        stop(bridge, signal.SIGKILL)
    (tmp_path / "status-b1.json").unlink()
    bridge = start_bridge(config, tmp_path / "bridge.log")
    try:
        wait_for(lambda: bridge_ready(config), what="the last bridge connected")
        wait_for(
            lambda: len({r["seq"] for r in read_jsonl(out)}) == total,
            timeout_s=90,
            what="the whole backlog",
        )
        keys = [r["key"] for r in read_jsonl(out)]
        assert len(keys) == len(set(keys)) == total, f"seed {seed}: a record was written twice"
    finally:
        code = stop(bridge)
    assert code == 0


def _status_body(dev: VirtualDevice) -> bytes:
    status = body.Status(state="online", agent="t", policy=dev.policy, cert_pem=dev.cert_pem)
    return bytes(msgpack.packb(body.status_content(status)))


def test_second_round_of_hostile_messages(broker: RunningBroker, tmp_path: Path) -> None:
    """Numbers past 2^63, NaN, a status dated 50 years ahead, and a flood of unsigned envelopes
    from a device that never says who it is: the bridge stays up and the fleet flows."""
    out = tmp_path / "out.jsonl"
    config = bridge_config(
        tmp_path / "bridge.yaml", broker, jsonl=out, extra="receive_maximum: 200\n"
    )
    bridge = start_bridge(config, tmp_path / "bridge.log")
    car1 = VirtualDevice.from_pki(broker.certs, "car-1")
    try:
        wait_for(lambda: bridge_ready(config), what="bridge connected")
        conn1 = _online(broker, car1)
        tele = car1.topic("telemetry")
        one = msgpack.packb(body.telemetry_content(car1.policy, {"a/b/c": ([1], [1.0])}))
        conn1.publish(tele, _raw(car1, "telemetry", one, seq=2**63)).result(5)
        far = _raw(car1, "status", _status_body(car1), seq=0, created_ms=2**63)
        conn1.publish(car1.topic("status"), far).result(5)
        ahead = int(time.time() * 1000) + 50 * 365 * 86400 * 1000
        conn1.publish(
            car1.topic("status"), _raw(car1, "status", _status_body(car1), seq=0, created_ms=ahead)
        ).result(5)
        nan = {"pt/X/y": [(1_700_000_000.0, float("nan")), (1_700_000_001.0, float("inf"))]}
        conn1.publish(tele, car1.telemetry(nan)).result(5)
        # car-2 floods envelopes with junk signatures and never sends a birth.
        conn2 = broker.connect("device", "car-2")
        car2 = VirtualDevice.from_pki(broker.certs, "car-2")
        for i in range(300):
            signed = msgpack.unpackb(car2.telemetry(_series(i)))[0]
            conn2.publish(car2.topic("telemetry"), msgpack.packb([signed, b"\0" * 64]))
        # car-1 renews its key: learned although a birth 50 years ahead came first.
        pki.issue(broker.certs, "device", "car-1", force=True)
        renewed = VirtualDevice.from_pki(broker.certs, "car-1")
        renewed.boot, renewed.seq = car1.boot, car1.seq
        conn1.publish(car1.topic("status"), renewed.birth(), retain=True).result(5)
        conn1.publish(tele, renewed.telemetry(_series(1))).result(5)
        wait_for(lambda: len(read_jsonl(out)) == 2, timeout_s=20, what="car-1 during the flood")
        records = read_jsonl(out)
        assert records[0]["series"]["pt/X/y"]["v"] == [None, None]  # strict JSON
        assert bridge.poll() is None
        status = json.loads((tmp_path / "status-b1.json").read_text())
        assert status["held"] <= 200 // 10
        reasons = [e["reason"] for e in read_jsonl(tmp_path / "quarantine-b1.jsonl")]
        assert reasons.count("malformed") >= 3  # 2^63 twice, and the status from the future
    finally:
        stop(bridge)
