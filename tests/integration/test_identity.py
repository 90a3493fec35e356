"""One identity, one name, one session: kinds never merge and client ids cannot be taken over."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from canvoy.certs import enrol, pki
from canvoy.errors import ConnectRefusedError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire.tls import TlsFiles
from tests.conftest import RunningBroker
from tests.identitykit import fleet_subject, handmade
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mosquitto_pub") is None, reason="mosquitto-clients is not installed"
    ),
]


def _stock_tls(broker: RunningBroker, cert: Path, key: Path, client_id: str) -> list[str]:
    return [
        "-h",
        "localhost",
        "-p",
        str(broker.port),
        "-V",
        "mqttv5",
        "-i",
        client_id,
        "--cafile",
        str(pki.ca_cert_path(broker.certs)),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]


FORGED_SUBJECTS: list[tuple[str, list[tuple[x509.ObjectIdentifier, str]]]] = [
    ("bridge's CN, OU device", fleet_subject("b1", "device")),
    ("operator's CN, OU device", fleet_subject("ops", "device")),
    ("bridge's CN only", [(NameOID.COMMON_NAME, "b1")]),
    (
        "device CN with OU bridge appended",
        [
            *fleet_subject("car-1", "device")[:2],
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "bridge"),
            (NameOID.COMMON_NAME, "car-1"),
        ],
    ),
]


@pytest.mark.parametrize(
    "attributes", [a for _n, a in FORGED_SUBJECTS], ids=[n for n, _a in FORGED_SUBJECTS]
)
def test_a_device_certificate_with_a_bridge_cn_gets_no_bridge_rights(
    broker: RunningBroker, tmp_path: Path, attributes: list[tuple[x509.ObjectIdentifier, str]]
) -> None:
    cert, key = handmade(broker.certs, tmp_path / "forged", attributes=attributes)
    seen: list[Message] = []
    ops = broker.connect("operator", "ops", received=seen)
    ops.subscribe([("fleet/v1/#", 1), ("canvoy/v1/+/telemetry", 1)])
    spied = tmp_path / "spy.out"
    spy_out = spied.open("w")
    spy = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            *_stock_tls(broker, cert, key, "b1"),
            "-d",
            "-v",
            "-q",
            "1",
            "-t",
            "canvoy/v1/+/#",
            "-t",
            "$share/canvoy/canvoy/v1/+/#",
            "-t",
            "fleet/v1/#",
        ],
        stdout=spy_out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: spied.read_text().count("received SUBACK") >= 1, what="spy's SUBACK")
        pub = subprocess.run(
            [
                "mosquitto_pub",
                *_stock_tls(broker, cert, key, "b1"),
                "-q",
                "1",
                "-t",
                "fleet/v1/car-1/events",
                "-m",
                '{"forged":true}',
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        # The positive control: what the spy could have read is published and is delivered.
        broker.connect("device", "car-2").publish("canvoy/v1/car-2/telemetry", b"t").result(5)
        broker.connect("bridge", "b1").publish("fleet/v1/car-2/events", b"real").result(5)
        wait_for(lambda: len(seen) >= 2, what="the operator to see both real messages")
    finally:
        spy.terminate()
        spy.wait(10)
        spy_out.close()
    out = spied.read_text()
    assert sorted((m.topic, bytes(m.payload)) for m in seen) == [
        ("canvoy/v1/car-2/telemetry", b"t"),
        ("fleet/v1/car-2/events", b"real"),
    ], f"mosquitto_pub said: {pub.stdout}{pub.stderr}"
    assert "received PUBLISH" not in out, out


def test_a_device_using_a_bridges_client_id_does_not_disconnect_it(
    broker: RunningBroker,
) -> None:
    got: list[Message] = []
    bridge = broker.connect("bridge", "b1", received=got, clean_start=False, session_expiry_s=3600)
    bridge.subscribe([("canvoy/v1/+/telemetry", 1)])
    thief = Connection(client_id="b1", tls=broker.tls("device", "car-1"), clean_start=False)
    thief.connect(broker.host, broker.port)
    broker.connections.append(thief)
    folder = pki.identity_dir(broker.certs, "device", "car-1")
    stock = subprocess.run(
        [
            "mosquitto_pub",
            *_stock_tls(broker, folder / "cert.pem", folder / "key.pem", "b1"),
            "-q",
            "1",
            "-t",
            "canvoy/v1/car-1/telemetry",
            "-m",
            "from-stock",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert stock.returncode == 0, stock.stderr
    car2 = broker.connect("device", "car-2")
    for i in range(12):
        car2.publish("canvoy/v1/car-2/telemetry", f"m{i}".encode()).result(5)
    wait_for(lambda: len(got) >= 13, what="every acknowledged message at the bridge")
    assert bridge.connected and not bridge.closed.done()
    # The stock client used car-1's certificate too: the only session it could take is car-1's.
    wait_for(thief.closed.done, what="car-1's first connection to be replaced")
    payloads = [bytes(m.payload) for m in got if m.topic == "canvoy/v1/car-2/telemetry"]
    assert payloads == [f"m{i}".encode() for i in range(12)]


def test_tail_says_when_its_session_is_taken_over(broker: RunningBroker, tmp_path: Path) -> None:
    err = tmp_path / "tail.err"
    with err.open("wb") as out:
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "canvoy",
                "tail",
                "--certs",
                str(broker.certs),
                "--identity",
                "operator/ops",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_for(lambda: "following" in err.read_text(), timeout_s=20, what="tail to follow")
        broker.connect("operator", "ops")  # a second tool with the same identity
        assert tail.wait(20) == 1  # a runtime failure, not a usage error
    finally:
        if tail.poll() is None:
            tail.kill()
    text = err.read_text()
    assert "took over this session" in text or "Session taken over" in text, text
    assert "identity of their own" in text, text
    assert "Traceback" not in text


def test_revoking_a_renewed_identity_also_refuses_its_earlier_certificate(
    broker: RunningBroker, tmp_path: Path
) -> None:
    folder = pki.identity_dir(broker.certs, "device", "car-2")
    old = tmp_path / "old-cert.pem"
    old.write_bytes((folder / "cert.pem").read_bytes())
    enrol.renew(broker.certs, "device", "car-2", days=365)
    pki.revoke(broker.certs, "car-2")
    broker.broker.reload()
    stale = TlsFiles(ca=pki.ca_cert_path(broker.certs), cert=old, key=folder / "key.pem")

    def refused() -> bool:
        conn = Connection(client_id="car-2", tls=stale.context())
        try:
            conn.connect(broker.host, broker.port, timeout_s=5)
        except ConnectRefusedError:
            return True
        conn.close()
        return False

    wait_for(refused, what="the pre-renewal certificate to be refused")
    assert broker.connect("device", "car-1").connected
