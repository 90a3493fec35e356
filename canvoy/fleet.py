"""The fleet view: every device's state from its retained status messages and their heartbeats.

A device's agent publishes its status retained on ``canvoy/v1/<device>/status``: ``online`` at
every connection and again every ``mqtt.heartbeat_s``, ``offline`` when it stops (a goodbye) or,
sent by the broker, when its connection is lost (the last will, ``lost``). So:

- online, heartbeat fresh: online since the connection began;
- online, but no heartbeat for 3 intervals: offline, *silent* since the last heartbeat (the
  vehicle lost power or network and the broker has not yet noticed the dead link);
- offline goodbye: offline since it said goodbye;
- offline will: offline, connection lost (the exact time is known only to a watcher that saw
  the will arrive; a retained will was written at connect time).

Every status is verified like a bridge does (fleet CA, CRL, the device's own certificate and
signature) before it counts.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.bridge.verify import MAX_FUTURE_MS, Parsed, check_envelope
from canvoy.errors import ConnectionLostError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire import body
from canvoy.wire.errors import EnvelopeError, IdentityMismatchError
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.tls import TlsFiles
from canvoy.wire.topics import PREFIX

STALE_HEARTBEATS = 3  # missed heartbeats before a device that said online counts as silent
QUIET_S = 0.5  # after the last retained message: the broker has sent them all
WAIT_MAX_S = 10.0
REJECTED_KEPT = 20  # the newest rejections a view shows; a device sending junk cannot grow it

Cause = Literal["connected", "heartbeat", "goodbye", "lost", "silent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sighting:
    """The newest verified status of one device, and when this view received it."""

    device: str
    status: body.Status
    created_ms: int
    received_ms: int
    live: bool  # received after the retained burst: the broker sent it just now


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    """One row of the fleet view."""

    device: str
    online: bool
    cause: Cause
    since_ms: int | None  # online since / offline since; None: not known (a retained will)
    last_seen_ms: int | None  # the device's newest status; None: not known
    connected_ms: int | None
    agent: str
    policy: str
    outbox: int
    overdue: int
    heartbeat_s: int

    def as_json(self) -> dict[str, Any]:
        """The row for ``--json``."""
        return {"state": "online" if self.online else "offline", **asdict(self)}


def judge(s: Sighting, now_ms: int, stale_after_s: float | None = None) -> DeviceState:
    """The state of a device from its newest status, at ``now_ms``.

    ``stale_after_s`` overrides ``STALE_HEARTBEATS`` heartbeat intervals (and applies to agents
    that send no heartbeat).
    """
    st = s.status
    limit_s = stale_after_s
    if limit_s is None and st.heartbeat_s > 0:
        limit_s = STALE_HEARTBEATS * st.heartbeat_s
    online = st.state == "online"
    cause: Cause
    since: int | None = s.created_ms
    seen: int | None = s.created_ms
    if online and limit_s is not None and now_ms - s.created_ms > limit_s * 1000:
        online, cause = False, "silent"
    elif online:
        beat = st.connected_ms is not None and s.created_ms > st.connected_ms + 1000
        cause = "heartbeat" if beat else "connected"
        since = st.connected_ms if st.connected_ms is not None else s.created_ms
    elif st.lost:
        # A will is signed at connect time: only its arrival, seen live, dates the loss.
        cause, since, seen = "lost", (s.received_ms if s.live else None), None
    else:
        cause = "goodbye"
    return DeviceState(
        device=s.device,
        online=online,
        cause=cause,
        since_ms=since,
        last_seen_ms=seen,
        connected_ms=st.connected_ms,
        agent=st.agent,
        policy=st.policy,
        outbox=st.outbox_depth,
        overdue=st.overdue,
        heartbeat_s=st.heartbeat_s,
    )


class FleetWatch:
    """An operator's subscription to every device's status, verifying each one."""

    def __init__(self, *, client_id: str, tls: TlsFiles, crl: Path | None) -> None:
        """Load the fleet CA and CRL (``crl`` may be absent).

        Raises:
            ConfigError: a TLS file is unusable.
            PKIError: the CA or CRL is not usable.
        """
        self._keys = DeviceKeys(tls.ca.read_bytes(), crl.read_bytes() if crl else None)
        self._inbox: queue.Queue[tuple[Message, int]] = queue.Queue()
        self._conn = Connection(client_id=client_id, tls=tls.context(), on_message=self._received)
        self.sightings: dict[str, Sighting] = {}
        self.rejected: deque[str] = deque(maxlen=REJECTED_KEPT)  # the newest
        self.rejected_total = 0
        self._settled = threading.Event()  # the retained burst is over

    def _received(self, msg: Message) -> None:
        self._inbox.put((msg, int(time.time() * 1000)))

    def connect(self, host: str, port: int) -> None:
        """Connect and subscribe to every device's status.

        Raises:
            TransportError: the broker cannot be reached, refused this identity, or the ACL
                refused the subscription.
        """
        self._conn.connect(host, port)
        self._conn.subscribe([(f"{PREFIX}/+/status", 1)])

    def settle(self, quiet_s: float = QUIET_S, wait_max_s: float = WAIT_MAX_S) -> None:
        """Take the retained statuses the broker sends at subscription: until none came for
        ``quiet_s`` (or ``wait_max_s`` passed).

        Raises:
            ConnectionLostError: the broker closed the connection.
        """
        deadline = time.monotonic() + wait_max_s
        while time.monotonic() < deadline:
            if not self.poll(quiet_s):
                break
        self._settled.set()

    def poll(self, timeout_s: float) -> bool:
        """Take what arrived within ``timeout_s``; True if anything did.

        Raises:
            ConnectionLostError: the broker closed the connection.
        """
        try:
            msg, at_ms = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            if self._conn.closed.done():
                raise ConnectionLostError(
                    f"the broker closed the connection: {self._conn.closed.result()}"
                ) from None
            return False
        self._take(msg, at_ms)
        while True:
            try:
                msg, at_ms = self._inbox.get_nowait()
            except queue.Empty:
                return True
            self._take(msg, at_ms)

    def _take(self, msg: Message, at_ms: int) -> None:
        device = msg.topic.split("/")[2] if msg.topic.count("/") == 3 else ""
        if not msg.payload:  # someone cleared the retained status: the device is forgotten
            self.sightings.pop(device, None)
            return

        def own_certificate(name: str, parsed: Parsed) -> list[ec.EllipticCurvePublicKey]:
            if not isinstance(parsed, body.Status):
                raise IdentityMismatchError(f"{msg.topic}: not a status")
            return [self._keys.check(name, parsed.cert_pem).key]

        try:
            verified = check_envelope(msg.topic, bytes(msg.payload), own_certificate)
        except EnvelopeError as exc:
            self._reject(f"{msg.topic}: {exc.reason}: {exc}")
            return
        status = verified.parsed
        assert isinstance(status, body.Status)
        e = verified.signed.envelope
        if e.created_ms > at_ms + MAX_FUTURE_MS:
            # As for a bridge: a status dated far ahead would keep a dead device "online".
            self._reject(
                f"{msg.topic}: malformed: status dated {(e.created_ms - at_ms) // 1000} s ahead "
                "of this clock"
            )
            return
        self.sightings[e.device] = Sighting(
            device=e.device,
            status=status,
            created_ms=e.created_ms,
            received_ms=at_ms,
            live=self._settled.is_set(),
        )

    def _reject(self, line: str) -> None:
        self.rejected.append(line)
        self.rejected_total += 1

    def states(
        self, now_ms: int | None = None, stale_after_s: float | None = None
    ) -> list[DeviceState]:
        """Every device seen, by name."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return [judge(self.sightings[d], now, stale_after_s) for d in sorted(self.sightings)]

    def close(self) -> None:
        """Disconnect."""
        if self._conn.connected:
            self._conn.close()


def watch(
    fleet: FleetWatch,
    every_s: float,
    show: Callable[[list[DeviceState]], None],
    stale_after_s: float | None = None,
) -> None:
    """Show the fleet, then again every ``every_s`` with what arrived meanwhile, until Ctrl-C.

    Raises:
        ConnectionLostError: the broker closed the connection.
    """
    while True:
        show(fleet.states(stale_after_s=stale_after_s))
        deadline = time.monotonic() + every_s
        while (left := deadline - time.monotonic()) > 0:
            fleet.poll(left)
