"""The broker as the PKI and ACL make it: real Mosquitto, real TLS, real clients."""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.certs import pki
from canvoy.errors import ConnectRefusedError, PublishRefusedError, TransportError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire.tls import client_context
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _try_connect(broker: RunningBroker, tls: ssl.SSLContext, client_id: str) -> Connection:
    conn = Connection(client_id=client_id, tls=tls)
    conn.connect(broker.host, broker.port, timeout_s=5)
    broker.connections.append(conn)
    return conn


def test_device_publishes_under_its_topic_and_bridge_receives(broker: RunningBroker) -> None:
    got: list[Message] = []
    bridge = broker.connect("bridge", "b1", received=got)
    bridge.subscribe([("canvoy/v1/+/#", 1)])
    car = broker.connect("device", "car-1")
    car.publish("canvoy/v1/car-1/telemetry", b"payload-1").result(5)
    wait_for(lambda: got, what="bridge to receive")
    assert got[0].topic == "canvoy/v1/car-1/telemetry"
    assert got[0].payload == b"payload-1"


def test_client_without_certificate_is_refused(broker: RunningBroker) -> None:
    tls = ssl.create_default_context(cafile=str(pki.ca_cert_path(broker.certs)))
    with pytest.raises(ConnectRefusedError, match="certificate"):
        _try_connect(broker, tls, "car-1")


def test_certificate_from_another_ca_is_refused(broker: RunningBroker, tmp_path: Path) -> None:
    other = tmp_path / "other-pki"
    pki.init_ca(other)
    ident = pki.issue(other, "device", "car-1")
    tls = client_context(
        ca=pki.ca_cert_path(broker.certs), cert=ident.cert_path, key=ident.key_path
    )
    with pytest.raises(ConnectRefusedError, match=r"fleet's CA|refused"):
        _try_connect(broker, tls, "car-1")


def test_expired_certificate_is_refused(broker: RunningBroker, tmp_path: Path) -> None:
    ca_key, ca_cert = pki.load_ca(broker.certs)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "car-1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=10))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "expired.pem", tmp_path / "expired-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # Built by hand: client_context() itself refuses an expired certificate before connecting,
    # and this test is about the broker refusing it.
    tls = ssl.create_default_context(cafile=str(pki.ca_cert_path(broker.certs)))
    tls.load_cert_chain(cert_path, key_path)
    with pytest.raises(ConnectRefusedError):
        _try_connect(broker, tls, "car-1")


def test_revoked_certificate_is_refused_after_reload(broker: RunningBroker) -> None:
    broker.connect("device", "car-2").close()
    pki.revoke(broker.certs, "car-2")
    broker.broker.reload()

    # Mosquitto reloads asynchronously after SIGHUP: the refusal must come within the deadline.
    def refused() -> bool:
        try:
            _try_connect(broker, broker.tls("device", "car-2"), "car-2").close()
        except ConnectRefusedError as exc:
            return "revoked" in str(exc)
        return False

    wait_for(refused, what="revoked device to be refused")
    assert broker.connect("device", "car-1").connected


def test_device_cannot_publish_under_another_device(broker: RunningBroker) -> None:
    got: list[Message] = []
    victim = broker.connect("device", "car-2", received=got)
    victim.subscribe([("canvoy/v1/car-2/receipts", 1)])
    watcher: list[Message] = []
    bridge = broker.connect("bridge", "b1", received=watcher)
    bridge.subscribe([("canvoy/v1/#", 1)])
    car1 = broker.connect("device", "car-1")
    for topic in ("canvoy/v1/car-2/telemetry", "canvoy/v1/car-2/receipts", "fleet/v1/car-2/events"):
        with pytest.raises(PublishRefusedError, match="Not authorized") as info:
            car1.publish(topic, b"forged").result(5)
        assert info.value.reason_code == 0x87
    # A legitimate message afterwards arrives, and it is the only one that does.
    car1.publish("canvoy/v1/car-1/telemetry", b"mine").result(5)
    wait_for(lambda: watcher, what="the legitimate publish")
    assert [m.topic for m in watcher] == ["canvoy/v1/car-1/telemetry"]
    assert got == []


def test_device_cannot_read_another_device(broker: RunningBroker) -> None:
    spied: list[Message] = []
    spy = broker.connect("device", "car-1", received=spied)
    spy.subscribe([("canvoy/v1/car-1/receipts", 1)])
    # Refusing the subscription outright is as good as delivering nothing.
    with contextlib.suppress(TransportError):
        spy.subscribe([("canvoy/v1/car-2/#", 1), ("canvoy/v1/+/telemetry", 1), ("fleet/#", 1)])
    bridge = broker.connect("bridge", "b1")
    car2 = broker.connect("device", "car-2")
    car2.publish("canvoy/v1/car-2/telemetry", b"secret").result(5)
    bridge.publish("canvoy/v1/car-2/receipts", b"receipt").result(5)
    bridge.publish("fleet/v1/car-2/telemetry", b"fleet").result(5)
    # The spy's own receipt arrives last, proving its session was live all along.
    bridge.publish("canvoy/v1/car-1/receipts", b"own").result(5)
    wait_for(lambda: spied, what="own receipt")
    assert [m.topic for m in spied] == ["canvoy/v1/car-1/receipts"]


def test_operator_reads_fleet_but_publishes_nothing(broker: RunningBroker) -> None:
    seen: list[Message] = []
    ops = broker.connect("operator", "ops", received=seen)
    ops.subscribe([("fleet/#", 1), ("canvoy/v1/+/#", 1)])
    bridge = broker.connect("bridge", "b1")
    bridge.publish("fleet/v1/car-1/events", b"{}").result(5)
    wait_for(lambda: seen, what="operator to see the fleet topic")
    for topic in ("fleet/v1/car-1/events", "canvoy/v1/car-1/telemetry"):
        with pytest.raises(PublishRefusedError):
            ops.publish(topic, b"x").result(5)


def test_bridge_cannot_impersonate_a_device(broker: RunningBroker) -> None:
    bridge = broker.connect("bridge", "b1")
    with pytest.raises(PublishRefusedError):
        bridge.publish("canvoy/v1/car-1/telemetry", b"x").result(5)


def test_broker_refuses_oversize_payload(broker: RunningBroker) -> None:
    car = broker.connect("device", "car-1")
    fut = car.publish("canvoy/v1/car-1/telemetry", b"x" * (200 * 1024))
    with pytest.raises(TransportError):
        fut.result(5)
