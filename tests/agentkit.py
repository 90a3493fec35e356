"""Helpers for tests that run a real agent: drive logs, configs, processes and a recorder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import load_pem_x509_certificate

from canvoy.certs import pki
from canvoy.errors import TransportError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire.envelope import SignedEnvelope, unpack, verify
from tests.conftest import RunningBroker

REPO = Path(__file__).resolve().parents[1]
TEST_DBC = REPO / "tests" / "data" / "test_vehicle.dbc"


def drive_log(path: Path, seconds: float, *, start: float = 1_700_000_000.0) -> Path:
    """A log of ENGINE (10 ms) and BODY (20 ms) frames whose values change every frame."""
    step = 0.01
    with can.Logger(str(path)) as logger:
        for i in range(int(seconds / step)):
            t = start + i * step
            rpm = (800 + (i * 7) % 5000) * 4
            logger.on_message_received(
                can.Message(
                    timestamp=t,
                    arbitration_id=0x100,
                    is_extended_id=False,
                    data=bytes(
                        [
                            rpm & 0xFF,
                            rpm >> 8,
                            120 + (i // 500) % 20,
                            1 + (i // 300) % 6,
                            0,
                            0,
                            i % 16,
                            0,
                        ]
                    ),
                )
            )
            if i % 2 == 0:
                speed = (i * 13) % 20000
                logger.on_message_received(
                    can.Message(
                        timestamp=t,
                        arbitration_id=0x200,
                        is_extended_id=False,
                        data=bytes([speed >> 8, speed & 0xFF, 0, 1, 2, 0, 100, 0]),
                    )
                )
    return path


def agent_config(
    path: Path,
    broker: RunningBroker,
    *,
    replay: Path,
    device: str = "car-1",
    speed: str = "max",
    extra: str = "",
    outbox: Path | None = None,
    port: int | None = None,
    mqtt: str = "reconnect_min_s: 0.2, reconnect_max_s: 2.0",
    loop: bool = False,
    delivery: str = "broker",
) -> Path:
    """Write an agent.yaml for ``device`` against ``broker`` (or a relay on ``port`` in front
    of it) replaying ``replay``. ``delivery`` is ``broker`` by default, for tests that run no
    bridge; pass ``bridge`` (or a whole ``{mode: bridge, ...}`` mapping) with one."""
    folder = pki.identity_dir(broker.certs, "device", device)
    outbox = outbox or path.parent / f"{device}-outbox.sqlite"
    path.write_text(
        f"""device: {device}
tls: {{ca: "{pki.ca_cert_path(broker.certs)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
buses:
  - name: pt
    databases: ["{TEST_DBC}"]
    replay: "{replay}"
    speed: "{speed}"
    loop: {str(loop).lower()}
outbox: {{path: "{outbox}"}}
mqtt: {{host: 127.0.0.1, port: {port or broker.port}, {mqtt}}}
shutdown_timeout_s: 10
delivery: {delivery}
{extra}"""
    )
    return path


def start_agent(config: Path, log: Path, *more: str) -> subprocess.Popen[bytes]:
    """``canvoy agent run`` as a real process, logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "canvoy", "agent", "run", "--config", str(config), *more],
            stdout=out,
            stderr=out,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    """Send ``sig`` and wait for the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout_s)


def device_key(broker: RunningBroker, device: str) -> ec.EllipticCurvePublicKey:
    """The public key in ``device``'s certificate."""
    cert = pki.identity_dir(broker.certs, "device", device) / "cert.pem"
    key = load_pem_x509_certificate(cert.read_bytes()).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


@dataclass
class Recorder:
    """An operator subscription with a persistent session that survives broker restarts.

    Every payload on the device's telemetry and events topics is unpacked and verified.
    """

    broker: RunningBroker
    device: str = "car-1"
    name: str = "ops"
    payloads: dict[int, list[bytes]] = field(default_factory=dict)
    envelopes: list[SignedEnvelope] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    subscriptions: int = 0  # how many times it has (re)subscribed

    def __post_init__(self) -> None:
        self._key = device_key(self.broker, self.device)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_message(self, msg: Message) -> None:
        try:
            signed = unpack(bytes(msg.payload))
            verify(signed, self._key)
        except Exception as exc:
            self.bad.append(f"{msg.topic}: {exc}")
            return
        with self._lock:
            self.envelopes.append(signed)
            self.payloads.setdefault(signed.envelope.seq, []).append(bytes(msg.payload))

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = Connection(
                client_id=self.name,
                tls=self.broker.tls("operator", self.name),
                clean_start=False,
                session_expiry_s=3600,
                on_message=self._on_message,
            )
            try:
                conn.connect(self.broker.host, self.broker.port, timeout_s=3)
                base = f"canvoy/v1/{self.device}"
                conn.subscribe([(f"{base}/telemetry", 1), (f"{base}/events", 1)])
            except TransportError:
                self._stop.wait(0.2)
                continue
            self.subscriptions += 1
            self._conn = conn
            while not self._stop.is_set() and not conn.closed.done():
                self._stop.wait(0.1)
        if self._conn is not None and self._conn.connected:
            self._conn.close()

    @property
    def seqs(self) -> list[int]:
        """Every sequence number seen, sorted, without repeats."""
        with self._lock:
            return sorted(self.payloads)

    def close(self) -> None:
        """Stop and disconnect."""
        self._stop.set()
        self._thread.join(10)

    def check_contiguous(self) -> dict[str, Any]:
        """Assert the recorded sequence is 1..max without a gap, each repeat byte-identical."""
        seqs = self.seqs
        assert not self.bad, self.bad[:3]
        assert seqs, "nothing recorded"
        missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
        assert not missing, f"missing sequence numbers: {missing[:20]}"
        repeats = {s: p for s, p in self.payloads.items() if len(p) > 1}
        for seq, copies in repeats.items():
            assert all(c == copies[0] for c in copies), f"seq {seq} repeated with other bytes"
        return {"last": seqs[-1], "repeats": len(repeats)}
