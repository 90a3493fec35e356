"""Fixtures shared by every test: a fresh fleet PKI and a real Mosquitto on a free port."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from canvoy.transport.mqtt import Connection, Message

pytest_plugins = ["tests.bridgekit"]  # the webhook receiver and nats-server fixtures

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "css-electronics"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    """A fleet PKI with a broker, devices car-1 and car-2, bridge b1 and operator ops."""
    root = tmp_path / "pki"
    pki.init_ca(root)
    pki.issue(root, "broker", "broker", hosts=["localhost", "127.0.0.1"])
    for name in ("car-1", "car-2"):
        pki.issue(root, "device", name)
    pki.issue(root, "bridge", "b1")
    pki.issue(root, "operator", "ops")
    return root


@dataclass
class RunningBroker:
    """A started Mosquitto plus helpers to connect identities of its PKI to it."""

    broker: Broker
    certs: Path
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    connections: list[Connection] = field(default_factory=list)

    def tls(self, kind: pki.IdentityKind, name: str) -> ssl.SSLContext:
        """A client TLS context for ``kind``/``name`` of this PKI."""
        return pki.tls_files(self.certs, kind, name).context()

    def connect(
        self,
        kind: pki.IdentityKind,
        name: str,
        *,
        received: list[Message] | None = None,
        **options: object,
    ) -> Connection:
        """Connect ``name`` over mutual TLS; messages are appended to ``received``."""
        sink = received
        conn = Connection(
            client_id=name,
            tls=self.tls(kind, name),
            on_message=(sink.append if sink is not None else None),
            **options,  # type: ignore[arg-type]
        )
        conn.connect(self.host, self.port)
        self.connections.append(conn)
        return conn

    def log(self) -> str:
        """What Mosquitto logged so far."""
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def broker(pki_dir: Path, tmp_path: Path) -> Iterator[RunningBroker]:
    """A real Mosquitto with the project's TLS and ACL config on a free loopback port."""
    settings = BrokerSettings(certs=pki_dir, port=free_port(), data=tmp_path / "broker-data")
    log_path = tmp_path / "mosquitto.log"
    proc = Broker(settings)
    with log_path.open("wb") as log:
        proc.start(log=log)
        running = RunningBroker(broker=proc, certs=pki_dir, port=settings.port, log_path=log_path)
        try:
            yield running
        finally:
            for conn in running.connections:
                if conn.connected:
                    conn.close()
            proc.stop()
