"""Send the outbox to the broker: QoS 1, a bounded window, rate limits, reconnect with back-off.

The publisher never holds data of its own. It reads rows from the outbox, publishes them, and
reports each PUBACK with a reason code < 0x80 to the outbox (which deletes the row with
``delivery: broker`` and keeps it until a bridge confirms it with ``delivery: bridge``), or
moves the row to ``rejected`` when the broker refuses it. When the connection drops, rows still
in flight simply stay in the outbox and are sent again, with identical bytes, on the next
connection. Bridges' confirmations arrive on the device's receipts topic.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from canvoy.agent.credentials import CertificateProblemError, Credentials
from canvoy.agent.outbox import Outbox, Row
from canvoy.errors import (
    ConfigError,
    ConnectionLostError,
    ConnectRefusedError,
    PublishRefusedError,
    TransportError,
)
from canvoy.transport.backoff import StoppedError, retry_until_stopped
from canvoy.transport.mqtt import Connection, Message, Will
from canvoy.wire.confirm import parse_confirmation
from canvoy.wire.errors import EnvelopeError
from canvoy.wire.topics import topic

log = logging.getLogger(__name__)

AWS_MAX_PUBLISHES_PER_S = 100
AWS_MAX_BYTES_PER_S = 512 * 1024
RECEIPT_SESSION_S = 7 * 24 * 3600
CERTIFICATE_POLL_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    """How the agent reaches its broker."""

    host: str = "localhost"
    port: int = 8883
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    max_inflight: int = 20
    max_publishes_per_s: float = AWS_MAX_PUBLISHES_PER_S
    max_bytes_per_s: int = AWS_MAX_BYTES_PER_S
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stall_timeout_s: float = 5.0  # publishes in flight and no PUBACK for this long: link dead
    probe_interval_s: float = 0.5  # while backing off from an unreachable broker
    heartbeat_s: int = 60  # the retained online status again this often (0: only at connect)

    def __post_init__(self) -> None:
        if not 0.5 <= self.stall_timeout_s <= 600:
            raise ConfigError(
                f"must be 0.5..600, got {self.stall_timeout_s}", key="stall_timeout_s"
            )
        if not 0.1 <= self.probe_interval_s <= 60:
            raise ConfigError(
                f"must be 0.1..60, got {self.probe_interval_s}", key="probe_interval_s"
            )
        if not (self.heartbeat_s == 0 or 1 <= self.heartbeat_s <= 86400):
            raise ConfigError(
                f"must be 0 (off) or 1..86400 seconds, got {self.heartbeat_s}", key="heartbeat_s"
            )
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not 1..65535")
        if not 1 <= self.max_inflight <= 20:
            raise ConfigError(f"max_inflight {self.max_inflight} must be 1..20")
        if not 0 < self.max_publishes_per_s <= AWS_MAX_PUBLISHES_PER_S:
            raise ConfigError(f"max_publishes_per_s must be in (0, {AWS_MAX_PUBLISHES_PER_S}]")
        if not 128 * 1024 <= self.max_bytes_per_s <= AWS_MAX_BYTES_PER_S:
            raise ConfigError(
                f"max_bytes_per_s must be {128 * 1024}..{AWS_MAX_BYTES_PER_S} "
                "(one envelope may be 128 KiB)"
            )
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ConfigError("reconnect_min_s must be > 0 and <= reconnect_max_s")


class RateLimit:
    """Token buckets for publishes and bytes per second, each holding one second's worth."""

    def __init__(self, per_s: float, bytes_per_s: float, clock: Callable[[], float]) -> None:
        self._rates = (per_s, bytes_per_s)
        self._tokens = [per_s, bytes_per_s]
        self._clock = clock
        self._last = clock()

    def wait_s(self, size: int) -> float:
        """Seconds until one publish of ``size`` bytes is allowed (0: now)."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        for i, rate in enumerate(self._rates):
            self._tokens[i] = min(rate, self._tokens[i] + elapsed * rate)
        need = (1.0, float(size))
        return max(0.0, *((need[i] - self._tokens[i]) / self._rates[i] for i in range(2)))

    def take(self, size: int) -> None:
        """Spend the tokens of one publish."""
        self._tokens[0] -= 1
        self._tokens[1] -= size


@dataclass(slots=True)
class PublishStats:
    """Counters for status and logs."""

    connects: int = 0
    published: int = 0
    acked: int = 0
    bytes_acked: int = 0
    refused: int = 0
    lost_connections: int = 0
    receipts: int = 0
    confirmations: int = 0
    bad_confirmations: int = 0  # malformed, or failed while being recorded; ignored
    confirmed: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    """The device id and what it connects with (its TLS files, read at each attempt)."""

    device: str
    credentials: Credentials


class LinkWatch:
    """What the publisher knows about the path to its broker between connections.

    ``back()`` is polled during a back-off wait: it probes the broker's TCP port and is true
    once a broker that could not be reached accepts connections again, or after a suspend.
    A broker that is reachable but refuses (a certificate problem) never cuts a wait short.
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._address = (host, port)
        self._timeout_s = timeout_s
        self._unreachable = False
        self._offset_s = _suspend_offset()

    def waiting(self) -> None:
        """A connection attempt failed; a wait begins."""
        self._unreachable = False

    def connected(self) -> None:
        """A connection is up."""
        self._offset_s = _suspend_offset()

    def suspended_s(self) -> float:
        """Seconds the system was suspended since the last call (0: none worth noticing)."""
        offset = _suspend_offset()
        slept, self._offset_s = offset - self._offset_s, offset
        return slept if slept > SUSPEND_S else 0.0

    def back(self) -> bool:
        """True when the wait should end now: the broker is reachable again, or we resumed."""
        if self.suspended_s():
            return True
        try:
            with socket.create_connection(self._address, timeout=self._timeout_s):
                pass
        except OSError:
            self._unreachable = True
            return False
        return self._unreachable


SUSPEND_S = 2.0
EXPIRY_WARNING_DAYS = 30


def _note_expiry(path: str, not_after: dt.datetime) -> None:
    """At each connection: say when the certificate expires soon, and what renews it."""
    left = not_after - dt.datetime.now(dt.UTC)
    if left > dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return
    log.warning(
        "certificate %s expires in %.1f days (%s UTC): renew it with 'canvoy certs renew' on "
        "the CA host and copy it over; the agent picks it up without a restart",
        path,
        left.total_seconds() / 86400,
        f"{not_after:%Y-%m-%d %H:%M}",
    )


def _suspend_offset() -> float:
    """How far the boot clock (which counts suspended time) is ahead of the monotonic one."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:  # not Linux: no suspend detection
        return 0.0
    return time.clock_gettime(boottime) - time.monotonic()


class Publisher:
    """One thread that keeps a connection up and drains the outbox through it."""

    def __init__(
        self,
        config: MqttConfig,
        identity: Identity,
        outbox: Outbox,
        *,
        birth: Callable[[], bytes],
        will: Callable[[], bytes],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``birth`` and ``will`` make the signed online and offline status payloads."""
        self.config = config
        self.identity = identity
        self.outbox = outbox
        self.stats = PublishStats()
        self._birth = birth
        self._will = will
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        outbox.listeners.append(self._wake)
        self._conn: Connection | None = None
        self.connected_ms: int | None = None  # when the current (or last) connection began
        self._next_heartbeat_s = 0.0
        self._inflight: dict[int, tuple[Row, Future[None]]] = {}
        self._progress_s = 0.0  # when a PUBACK last arrived, or the window last opened
        self._link = LinkWatch(config.host, config.port, config.probe_interval_s)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._rate = RateLimit(config.max_publishes_per_s, config.max_bytes_per_s, clock)

    def start(self) -> None:
        """Start connecting and publishing."""
        self._thread.start()

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._conn is not None and self._conn.connected

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and nothing is in flight; True if it got there.

        With ``delivery: bridge`` an empty outbox means every envelope was confirmed.
        """
        deadline = self._clock() + timeout_s
        self._wake.set()
        while self._clock() < deadline:
            if not self._inflight and self.outbox.depth() == 0:
                return True
            time.sleep(0.05)
        return not self._inflight and self.outbox.depth() == 0

    def stop(self, goodbye: bytes | None = None, timeout_s: float = 5.0) -> None:
        """Stop; say goodbye with ``goodbye`` (a retained offline status) if connected."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        conn = self._conn
        if conn is not None and conn.connected:
            if goodbye is not None:
                try:
                    status_topic = topic(self.identity.device, "status")
                    conn.publish(status_topic, goodbye, retain=True).result(timeout_s)
                except (TransportError, TimeoutError) as exc:
                    log.warning("offline status not acknowledged: %s", exc)
            conn.close()

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = self._connect()
            if conn is None:
                return
            try:
                self._pump(conn)
            except ConnectionLostError as exc:
                log.warning("connection to %s lost: %s", self.config.host, exc)
            except Exception as exc:  # the service loop logs and carries on
                log.exception("publisher: unexpected error: %s", exc)
                self.stats.last_error = str(exc)
            finally:
                if not self._stop.is_set():
                    self.stats.lost_connections += 1
                    self._inflight.clear()
                    if conn.connected:
                        conn.close(timeout_s=1)
                    else:
                        conn.close(timeout_s=0.1)  # stop paho's thread of a dead link

    def _connect(self) -> Connection | None:
        c = self.config

        def note(error: BaseException | None, wait: float) -> None:
            self.stats.last_error = str(error)
            if isinstance(error, ConnectRefusedError):
                # A certificate or authorization problem will not fix itself: say so loudly.
                log.error("broker refused the connection: %s; retrying in %.0f s", error, wait)
            else:
                log.warning("cannot connect: %s; retrying in %.1f s", error, wait)
            self._link.waiting()

        while self._await_certificate():
            try:
                return retry_until_stopped(
                    self._connect_once,
                    retry_on=TransportError,
                    stop=self._stop,
                    initial_s=c.reconnect_min_s,
                    max_s=c.reconnect_max_s,
                    jitter_s=c.reconnect_min_s,
                    on_retry=note,
                    # Back-off protects the broker from attempts that fail there; once a broker
                    # that could not be reached is reachable again, the next attempt is made now.
                    interrupt=self._link.back,
                    poll_s=c.probe_interval_s,
                )
            except CertificateProblemError:
                continue  # expired or replaced between attempts: wait for usable files again
            except StoppedError:
                return None
        return None

    def _await_certificate(self) -> bool:
        """Wait until the certificate and key on disk are usable; False when stopped.

        Collection goes on meanwhile (the outbox fills). The files are looked at every
        second, so a renewed certificate is used at once; the reason and its fix are logged
        at the first attempt, when they change, and then once per ``reconnect_max_s``.
        """
        logged, next_log = "", 0.0
        while not self._stop.is_set():
            try:
                self.identity.credentials.load()
            except CertificateProblemError as exc:
                self.stats.last_error = str(exc)
                now = self._clock()
                if str(exc) != logged or now >= next_log:
                    log.error("not connecting: %s", exc)
                    logged, next_log = str(exc), now + self.config.reconnect_max_s
                self._stop.wait(CERTIFICATE_POLL_S)
                continue
            if logged:
                log.warning(
                    "certificate %s is usable again: connecting",
                    self.identity.credentials.files.cert,
                )
            return True
        return False

    def _connect_once(self) -> Connection:
        device = self.identity.device
        status_topic = topic(device, "status")
        # Checked again at every attempt: the certificate may have expired since the last one.
        loaded = self.identity.credentials.load()
        tls = loaded.context
        # The birth, its heartbeats and the will all carry the time this connection began.
        self.connected_ms = int(time.time() * 1000)
        conn = Connection(
            client_id=device,
            tls=tls,
            # A session keeps receipts that bridges send while the vehicle is offline. Our own
            # publishes never rely on it: unacknowledged rows are re-sent from the outbox.
            clean_start=False,
            session_expiry_s=RECEIPT_SESSION_S,
            will=Will(topic=status_topic, payload=self._will()),
            max_inflight=self.config.max_inflight,
            on_message=self._on_receipt,
        )
        connack = conn.connect(
            self.config.host,
            self.config.port,
            timeout_s=self.config.connect_timeout_s,
            keepalive_s=self.config.keepalive_s,
        )
        receipts = topic(device, "receipts")
        try:
            conn.subscribe([(receipts, 1)])
        except TransportError:
            conn.close(timeout_s=0.1)  # this attempt failed: its network thread ends with it
            raise
        self._conn = conn
        self.stats.connects += 1
        self.stats.last_error = ""
        self._window = max(1, min(self.config.max_inflight, connack.receive_maximum))
        conn.publish(status_topic, self._birth(), retain=True)
        self._next_heartbeat_s = self._clock() + self.config.heartbeat_s
        log.info(
            "connected to %s:%d as %s (session %s, window %d); subscribed to %s",
            self.config.host,
            self.config.port,
            device,
            "resumed" if connack.session_present else "new",
            self._window,
            receipts,
        )
        _note_expiry(str(self.identity.credentials.files.cert), loaded.not_after)
        return conn

    def _heartbeat(self, conn: Connection) -> None:
        """Publish the retained online status again when due: its age tells a fleet view that
        this device is alive even while the broker has not yet noticed a dead link."""
        if not self.config.heartbeat_s or self._clock() < self._next_heartbeat_s:
            return
        self._next_heartbeat_s = self._clock() + self.config.heartbeat_s
        conn.publish(topic(self.identity.device, "status"), self._birth(), retain=True)

    def _on_receipt(self, msg: Message) -> None:
        """A bridge confirms envelopes as durably forwarded (only bridges may publish here).

        This runs on paho's network thread, where an exception would end the connection's
        loop; the session then brings the same message back at every reconnect. So whatever
        one confirmation does wrong is caught here, counted and logged, and the link goes on.
        """
        try:
            got = parse_confirmation(bytes(msg.payload))
        except EnvelopeError as exc:
            self.stats.bad_confirmations += 1
            log.warning("ignoring a malformed confirmation on %s: %s", msg.topic, exc)
            return
        try:
            self.stats.receipts += self.outbox.record_receipt(got.keys, got.delivered_ms)
            self.stats.confirmed += self.outbox.confirm(got.ranges, got.delivered_ms)
        except Exception as exc:  # the boundary of one message: logged, counted, survived
            self.stats.bad_confirmations += 1
            log.error(
                "ignoring a confirmation on %s that could not be recorded: %s",
                msg.topic,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            return
        self.stats.confirmations += 1

    def _pump(self, conn: Connection) -> None:
        device = self.identity.device
        topics = {k: topic(device, k) for k in ("telemetry", "events")}
        self._link.connected()
        while True:
            self._settle()
            if self._stop.is_set() or conn.closed.done():
                if conn.closed.done():
                    raise ConnectionLostError(conn.closed.result())
                return
            self._check_link()
            self._heartbeat(conn)
            room = self._window - len(self._inflight)
            rows = self.outbox.pending(room, self._inflight) if room > 0 else []
            for row in rows:
                wait = self._rate.wait_s(len(row.payload))
                if wait > 0:
                    self._stop.wait(wait)
                    if self._stop.is_set():
                        return
                self._rate.take(len(row.payload))
                if not self._inflight:
                    self._progress_s = self._clock()
                fut = conn.publish(topics[row.kind], row.payload)
                fut.add_done_callback(lambda _f: self._wake.set())
                self._inflight[row.seq] = (row, fut)
                self.stats.published += 1
            self._wake.wait(0.5)
            self._wake.clear()

    def _check_link(self) -> None:
        """Notice a dead link within seconds, not after 1.5 keep-alives.

        Raises:
            ConnectionLostError: publishes are in flight and no PUBACK came for
                ``stall_timeout_s``, or the machine was suspended (the link is stale).
        """
        stalled = self._clock() - self._progress_s
        if self._inflight and stalled > self.config.stall_timeout_s:
            raise ConnectionLostError(
                f"no PUBACK for {stalled:.1f} s with {len(self._inflight)} publish(es) in "
                "flight: the link is down (mqtt.stall_timeout_s)"
            )
        slept = self._link.suspended_s()
        if slept:
            raise ConnectionLostError(f"the system was suspended for {slept:.0f} s")

    def _settle(self) -> None:
        """Record finished publishes: acknowledged rows leave, refused ones are rejected."""
        acked: list[int] = []
        lost = False
        for seq, (row, fut) in list(self._inflight.items()):
            if not fut.done():
                continue
            del self._inflight[seq]
            self._progress_s = self._clock()
            exc = fut.exception()
            if exc is None:
                acked.append(seq)
                self.stats.acked += 1
                self.stats.bytes_acked += len(row.payload)
            elif isinstance(exc, PublishRefusedError):
                self.stats.refused += 1
                self.outbox.reject(seq, exc.reason_code, str(exc))
            else:
                lost = True  # stays in the outbox, sent again after reconnecting
        self.outbox.acknowledge(acked)
        if lost:
            raise ConnectionLostError("publishes failed with the connection")
