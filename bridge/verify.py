"""Verify one MQTT message: size, structure, version, identity, signature, body, replay window.

The same code serves the bridge and ``canvoy tail``. Every failure raises an EnvelopeError whose
``reason`` is the quarantine reason (``DuplicateError`` is a redelivery, not an attack).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.wire import body
from canvoy.wire.envelope import SignedEnvelope, unpack, verify
from canvoy.wire.errors import DuplicateError, IdentityMismatchError, ReplayError
from canvoy.wire.events import Event, parse_events
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.topics import parse_topic

DEFAULT_WINDOW = 100_000
MAX_BOOTS_PER_DEVICE = 8


@dataclass(frozen=True, slots=True)
class Verified:
    """An authentic envelope and its parsed body."""

    topic: str
    signed: SignedEnvelope
    content: dict[str, Any]
    parsed: Parsed

    @property
    def key(self) -> str:
        """The idempotency key ``device:boot:seq``."""
        return self.signed.envelope.key


class ReplayWindow:
    """Sequence numbers seen per device and boot, ``size`` behind the highest. Thread-safe.

    An exact repeat inside the window is a duplicate; a number more than ``size`` behind the
    highest seen for that boot is a replay. Anything newer, or late but inside the window (a
    redelivery from another bridge instance), is accepted.
    """

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._boots: dict[str, OrderedDict[bytes, tuple[list[int], set[int]]]] = {}

    def admit(self, device: str, boot: bytes, seq: int) -> None:
        """Record ``seq``.

        Raises:
            DuplicateError: already seen.
            ReplayError: far behind the window.
        """
        with self._lock:
            boots = self._boots.setdefault(device, OrderedDict())
            state = boots.get(boot)
            if state is None:
                state = boots[boot] = ([seq], set())
                if len(boots) > MAX_BOOTS_PER_DEVICE:
                    boots.popitem(last=False)
            boots.move_to_end(boot)
            high, seen = state[0], state[1]
            if seq in seen:
                raise DuplicateError(f"{device}:{boot.hex()}:{seq} was already received")
            if seq < high[0] - self.size:
                raise ReplayError(
                    f"{device}: sequence {seq} is more than {self.size} behind {high[0]}"
                )
            seen.add(seq)
            if seq > high[0]:
                high[0] = seq
                if len(seen) > 2 * self.size:
                    floor = seq - self.size
                    state[1].difference_update([s for s in seen if s < floor])

    def forget(self, device: str, boot: bytes, seq: int) -> None:
        """Undo ``admit`` for a message that could not be delivered (so its redelivery counts)."""
        with self._lock:
            boots = self._boots.get(device)
            state = boots.get(boot) if boots is not None else None
            if state is not None:
                state[1].discard(seq)


Parsed = body.Telemetry | list[Event] | body.Status
_PARSERS: dict[str, Callable[[Mapping[str, Any]], Parsed]] = {
    "telemetry": body.parse_telemetry,
    "events": parse_events,
    "status": body.parse_status,
}


class Verifier:
    """Checks messages against the trusted device keys and the replay window."""

    def __init__(self, keys: DeviceKeys, window: ReplayWindow | None = None) -> None:
        self.keys = keys
        self.window = window or ReplayWindow()

    def check(self, topic: str, payload: bytes, *, admit: bool = True) -> Verified:
        """Verify ``payload`` received on ``topic``; learn the key from a status message.

        Raises:
            EnvelopeError: a subclass whose ``reason`` names the failure.
        """
        verified = check_envelope(topic, payload, self._key_for)
        if admit:
            self.admit(verified)
        return verified

    def _key_for(self, device: str, parsed: Parsed) -> ec.EllipticCurvePublicKey:
        if isinstance(parsed, body.Status):
            # A birth carries the device certificate: check it, then the signature with it.
            return self.keys.learn(device, parsed.cert_pem).key
        return self.keys.require(device).key

    def admit(self, verified: Verified) -> None:
        """Apply the replay window to an envelope verified elsewhere (e.g. a worker process).

        Raises:
            DuplicateError: already admitted.
            ReplayError: far behind the window.
        """
        e = verified.signed.envelope
        if e.kind != "status":
            self.window.admit(e.device, e.boot, e.seq)


def check_envelope(
    topic: str, payload: bytes, key_for: Callable[[str, Parsed], ec.EllipticCurvePublicKey]
) -> Verified:
    """Everything but the replay window: structure, identity, body, then the signature.

    Raises:
        EnvelopeError: a subclass whose ``reason`` names the failure.
    """
    device, kind = parse_topic(topic)
    signed = unpack(payload)
    e = signed.envelope
    if e.device != device:
        raise IdentityMismatchError(f"topic {topic!r} carries an envelope of device {e.device!r}")
    if e.kind != kind:
        raise IdentityMismatchError(f"topic {topic!r} carries a {e.kind!r} envelope")
    content = body.decode(e.encoding, e.body)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise IdentityMismatchError(f"devices do not publish {kind!r} messages")
    parsed = parser(content)
    verify(signed, key_for(device, parsed))
    return Verified(topic, signed, content, parsed)
