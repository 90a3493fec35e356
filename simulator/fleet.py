"""Simulated devices that publish signed envelopes directly: load for bridges, fakes for tests.

A ``VirtualDevice`` holds a device key and certificate from the fleet PKI and makes exactly the
payloads an agent makes (birth, telemetry batches, events), numbered like an agent's outbox.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from canvoy.wire import body
from canvoy.wire.envelope import Envelope, sign
from canvoy.wire.events import Event, events_content
from canvoy.wire.topics import Kind, topic


@dataclass
class VirtualDevice:
    """One simulated device: its identity and its sequence counter."""

    device: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: str
    boot: bytes = field(default_factory=lambda: os.urandom(16))
    seq: int = 0
    policy: str = "0" * 64

    @classmethod
    def from_pki(cls, certs: Path, device: str) -> VirtualDevice:
        """Load ``device``'s key and certificate from a ``canvoy certs`` directory."""
        folder = certs / "device" / device
        key = load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(device, key, (folder / "cert.pem").read_text())

    def topic(self, kind: Kind) -> str:
        """This device's topic for ``kind``."""
        return topic(self.device, kind)

    def seal(self, kind: Kind, content: Mapping[str, Any], *, seq: int | None = None) -> bytes:
        """A signed payload of ``content``; takes the next sequence number unless given."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        encoding, data = body.encode(content)
        envelope = Envelope(
            device=self.device,
            boot=self.boot,
            seq=seq,
            kind=kind,
            created_ms=int(time.time() * 1000),
            encoding=encoding,
            body=data,
        )
        return sign(envelope, self.key)

    def birth(self, state: body.State = "online") -> bytes:
        """The retained status message carrying the certificate."""
        status = body.Status(state=state, agent="sim", policy=self.policy, cert_pem=self.cert_pem)
        return self.seal("status", body.status_content(status), seq=0)

    def telemetry(self, series: Mapping[str, Sequence[tuple[float, body.Scalar]]]) -> bytes:
        """A telemetry batch from ``key -> [(unix time s, value), ...]``."""
        columns = {
            key: ([int(t * 1000) for t, _v in points], [v for _t, v in points])
            for key, points in series.items()
        }
        return self.seal("telemetry", body.telemetry_content(self.policy, columns))

    def events(self, events: Sequence[Event]) -> bytes:
        """An events envelope."""
        return self.seal("events", events_content(events))


def drive_series(
    start: float, seconds: float, signals: int = 20
) -> dict[str, list[tuple[float, float]]]:
    """A plausible second of telemetry: ``signals`` signals at 100 Hz to 1 Hz."""
    series: dict[str, list[tuple[float, float]]] = {}
    for i in range(signals):
        period = (0.01, 0.02, 0.1, 0.5, 1.0)[i % 5]
        n = max(1, int(seconds / period))
        series[f"pt/MSG{i // 4}/SIG{i}"] = [
            (start + k * period, round(50 + 10 * ((k * (i + 1)) % 17) / 17, 2)) for k in range(n)
        ]
    return series
