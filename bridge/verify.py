"""Verify one MQTT message: size, structure, version, identity, signature, body, replay window.

The same code serves the bridge and ``canvoy tail``. Every failure raises an EnvelopeError whose
``reason`` is the quarantine reason (``DuplicateError`` is a redelivery, not an attack).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.wire import body
from canvoy.wire.envelope import SignedEnvelope, unpack, verify
from canvoy.wire.errors import (
    DuplicateError,
    IdentityMismatchError,
    MalformedError,
    ReplayError,
    SignatureError,
)
from canvoy.wire.events import Event, parse_events
from canvoy.wire.keys import DeviceKey, DeviceKeys
from canvoy.wire.topics import parse_topic

DEFAULT_WINDOW = 100_000
MAX_FUTURE_MS = 24 * 3600 * 1000  # a status dated further ahead is not a device's newest
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


StatusOrder = tuple[int, int, int]  # (connection start, 1 if offline, created_ms)


def status_order(created_ms: int, status: body.Status) -> StatusOrder:
    """Which of two statuses of a device is newer (PROTOCOL.md, *Status*).

    A connection's last will is signed when the connection begins, before its birth and its
    heartbeats, yet it is the newest word on that connection once the broker publishes it. So
    statuses are ordered by the connection they speak of first (``connected_ms``; the creation
    time for agents that do not send it), then offline after online, then by creation time.
    """
    connected = created_ms if status.connected_ms is None else status.connected_ms
    return connected, int(status.state == "offline"), created_ms


class Verifier:
    """Checks messages against the trusted device keys and the replay window."""

    def __init__(self, keys: DeviceKeys, window: ReplayWindow | None = None) -> None:
        self.keys = keys
        self.window = window or ReplayWindow()
        self._status_lock = threading.Lock()
        self._status: dict[str, StatusOrder] = {}  # the newest status per device

    def check(self, topic: str, payload: bytes, *, admit: bool = True) -> Verified:
        """Verify ``payload`` received on ``topic``; learn the key from a status message.

        A status message teaches its certificate's key only after the status itself verified
        with that key and is newer than the newest status of the device seen so far.

        Raises:
            EnvelopeError: a subclass whose ``reason`` names the failure.
        """
        candidate: list[DeviceKey] = []

        def keys_for(device: str, parsed: Parsed) -> list[ec.EllipticCurvePublicKey]:
            if isinstance(parsed, body.Status):
                # A birth carries the device certificate: check it, verify with it, then trust it.
                candidate.append(self.keys.check(device, parsed.cert_pem))
                return [candidate[0].key]
            return [k.key for k in self.keys.require(device)]

        verified = check_envelope(topic, payload, keys_for)
        if candidate and isinstance(verified.parsed, body.Status):
            # The key rule does not depend on the status's time (PROTOCOL.md, "Keys"): a valid
            # certificate whose status verified is trusted, and an older one teaches nothing new.
            self.keys.trust(candidate[0])
            e = verified.signed.envelope
            ahead_ms = e.created_ms - int(time.time() * 1000)
            if ahead_ms > MAX_FUTURE_MS:
                raise MalformedError(
                    f"{e.device}: status created {ahead_ms // 1000} s ahead of this bridge's "
                    "clock; it is not taken as the device's newest"
                )
            order = status_order(e.created_ms, verified.parsed)
            with self._status_lock:
                newest = self._status.get(e.device)
                if newest is None or order > newest:
                    self._status[e.device] = order
            if newest is not None and order <= newest:
                raise DuplicateError(
                    f"{e.device}: status {order} is not newer than {newest} "
                    "(connection start, offline, created)"
                )
        if admit:
            self.admit(verified)
        return verified

    def restore_statuses(self, newest: Mapping[str, StatusOrder]) -> None:
        """Remember the newest status per device (from the bridge's state file)."""
        with self._status_lock:
            self._status.update(newest)

    def admit(self, verified: Verified) -> None:
        """Apply the replay window to an envelope verified elsewhere (e.g. a worker process).

        Raises:
            DuplicateError: already admitted.
            ReplayError: far behind the window.
        """
        e = verified.signed.envelope
        if e.kind != "status":
            self.window.admit(e.device, e.boot, e.seq)


KeysFor = Callable[[str, Parsed], Sequence[ec.EllipticCurvePublicKey]]


def check_envelope(topic: str, payload: bytes, keys_for: KeysFor) -> Verified:
    """Everything but the replay window: structure, identity, body, then the signature, which
    must verify with one of the keys ``keys_for`` gives (a device may have two during renewal).

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
    keys = keys_for(device, parsed)
    for i, key in enumerate(keys):
        try:
            verify(signed, key)
            break
        except SignatureError:
            if i == len(keys) - 1:
                raise
    else:
        raise SignatureError(f"{e.key}: no key to verify it with")
    return Verified(topic, signed, content, parsed)
