"""The running bridge: subscribe, verify, forward to sinks, acknowledge only what was forwarded.

One thread keeps the MQTT connection up (persistent session, shared subscriptions); one worker
takes received messages in batches, verifies them, hands the records to every routed sink
(retrying an unavailable sink with back-off, never dropping) and only then acknowledges them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.quarantine import Quarantine
from canvoy.bridge.records import Record, records
from canvoy.bridge.sinks.base import Sink, SinkContext, build_sink
from canvoy.bridge.tickets import Ticketing
from canvoy.bridge.verify import ReplayWindow, Verified, Verifier
from canvoy.bridge.workers import Job, VerifyPool, public_bytes
from canvoy.errors import ConfigError, ConnectionLostError, SinkError, TransportError
from canvoy.transport.backoff import StoppedError, retry_until_stopped
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire import body
from canvoy.wire.errors import DuplicateError, EnvelopeError, UnknownDeviceError
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.topics import PREFIX, topic

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 30.0


@dataclass(slots=True)
class _Held:
    conn: Connection
    msg: Message
    until: float


@dataclass(slots=True)
class _Item:
    conn: Connection
    msg: Message
    verified: Verified
    records: list[Record]


class Bridge:
    """One bridge process; ``run`` blocks until ``stop``."""

    def __init__(self, config: BridgeConfig) -> None:
        """Load the fleet CA, CRL and known devices and build the sinks.

        Raises:
            ConfigError: a file or a sink option is unusable.
            PKIError: the CA or CRL is not usable.
        """
        self.config = config
        try:
            ca_pem = config.tls.ca.read_bytes()
            crl_pem = config.crl.read_bytes() if config.crl else None
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        self.keys = DeviceKeys(ca_pem, crl_pem)
        if config.known_devices is not None:
            log.info("preloaded %d device certificate(s)", self.keys.preload(config.known_devices))
        self.verifier = Verifier(self.keys, ReplayWindow(config.replay_window))
        self.quarantine = Quarantine(config.quarantine)
        self.tls = config.tls.context()
        context = SinkContext(publish=self._publish)
        self.sinks: dict[str, Sink] = {
            name: build_sink(name, options, context) for name, options in config.sinks.items()
        }
        self.routes: dict[str, list[Sink]] = {
            kind: [self.sinks[n] for n in names] for kind, names in config.routes.items()
        }
        self.ticketing = Ticketing(config.service_rules)
        workers = config.verify_workers
        if workers is None:
            cores = os.cpu_count() or 1
            workers = min(4, cores) if cores > 1 else 0
        self.pool = VerifyPool(workers) if workers > 0 else None
        self._sec1: dict[str, bytes] = {}
        self.stats: Counter[str] = Counter()
        self._queue: queue.Queue[tuple[Connection, Message]] = queue.Queue()
        self._held: list[_Held] = []
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._connected = threading.Event()
        self._keeper = threading.Thread(target=self._keep_connected, name="mqtt", daemon=True)
        self.on_forwarded: Callable[[list[Verified]], None] | None = None

    # -- connection --------------------------------------------------------------------------

    def _publish(self, name: str, payload: bytes) -> Future[None]:
        conn = self._conn
        if conn is None or not conn.connected:
            fut: Future[None] = Future()
            fut.set_exception(ConnectionLostError("the bridge is not connected to the broker"))
            return fut
        return conn.publish(name, payload)

    def _subscriptions(self) -> list[tuple[str, int]]:
        group = self.config.group
        return [
            (f"$share/{group}/{PREFIX}/+/telemetry", 1),
            (f"$share/{group}/{PREFIX}/+/events", 1),
            (f"{PREFIX}/+/status", 1),  # every instance: the births teach it every key
        ]

    def _connect_once(self) -> Connection:
        c = self.config
        conn = Connection(
            client_id=c.name,
            tls=self.tls,
            clean_start=False,
            session_expiry_s=c.session_expiry_s,
            manual_ack=True,
            on_message=lambda msg: self._queue.put((conn, msg)),
            receive_maximum=c.receive_maximum,
        )
        connack = conn.connect(c.broker.host, c.broker.port, keepalive_s=c.broker.keepalive_s)
        conn.subscribe(self._subscriptions())
        log.info(
            "bridge %s connected to %s:%d (session %s)",
            c.name,
            c.broker.host,
            c.broker.port,
            "resumed" if connack.session_present else "new",
        )
        return conn

    def _keep_connected(self) -> None:
        def note(error: BaseException | None, _wait: float) -> None:
            log.error("bridge cannot connect: %s", error)
            self.stats["connect_failures"] += 1

        while not self._stop.is_set():
            try:
                conn = retry_until_stopped(
                    self._connect_once,
                    retry_on=TransportError,
                    stop=self._stop,
                    initial_s=1.0,
                    max_s=RECONNECT_MAX_S,
                    jitter_s=0.5,
                    on_retry=note,
                )
            except StoppedError:
                return
            self._conn = conn
            self._connected.set()
            self.stats["connects"] += 1
            self._report()
            while not self._stop.is_set() and not conn.closed.done():
                self._stop.wait(0.2)
            self._connected.clear()
            if not self._stop.is_set():
                log.warning("bridge lost its connection: %s", conn.closed.result())

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Run until ``stop`` (or until ``until()`` is true); return the exit code."""
        self._keeper.start()
        next_report = time.monotonic() + 10
        try:
            while not self._stop.is_set():
                batch = self._take()
                if batch:
                    self._process(batch)
                self._recheck_held()
                if time.monotonic() >= next_report:
                    self._report()
                    next_report = time.monotonic() + 10
                if until is not None and until():
                    break
        except StoppedError:
            pass
        finally:
            self._stop.set()
            self._keeper.join(5)
            conn = self._conn
            if conn is not None and conn.connected:
                conn.close()
            for sink in self.sinks.values():
                sink.close()
            if self.pool is not None:
                self.pool.close()
            self._report()
        return 0

    def _take(self) -> list[tuple[Connection, Message]]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.config.batch_max:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _report(self) -> None:
        report = {
            "name": self.config.name,
            "updated_ms": int(time.time() * 1000),
            "connected": self._connected.is_set(),
            "counts": dict(self.stats),
            "quarantined": dict(self.quarantine.counts),
            "held": len(self._held),
            "queued": self._queue.qsize(),
        }
        log.info("bridge: %s", json.dumps(report["counts"]))
        path = self.config.status_file
        if path is not None:
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(report, indent=1))
                tmp.replace(path)
            except OSError as exc:
                log.warning("status file %s not written: %s", path, exc)

    # -- the pipeline ------------------------------------------------------------------------

    @staticmethod
    def _ack(conn: Connection, msg: Message) -> None:
        if conn.connected:
            conn.ack(msg.mid, msg.qos)
        # else: the broker redelivers it on the next connection; it is then a duplicate.

    def _reject(self, conn: Connection, msg: Message, reason: str, detail: str) -> None:
        self.quarantine.add(msg.topic, reason, detail, bytes(msg.payload))
        self.stats[f"rejected_{reason}"] += 1
        log.warning("rejected %s (%s): %s", msg.topic, reason, detail)
        self._ack(conn, msg)

    def _verify(self, conn: Connection, msg: Message, *, held: bool = False) -> _Item | None:
        try:
            verified = self.verifier.check(msg.topic, bytes(msg.payload), admit=False)
        except UnknownDeviceError as exc:
            if exc.reason == "unknown_device" and not held:
                self._held.append(_Held(conn, msg, time.monotonic() + self.config.hold_unknown_s))
                self.stats["held"] += 1
                return None
            self._reject(conn, msg, exc.reason, str(exc))
            return None
        except EnvelopeError as exc:
            self._reject(conn, msg, exc.reason, str(exc))
            return None
        except Exception as exc:  # whatever arrives, the bridge keeps running
            log.exception("unexpected error verifying %s", msg.topic)
            self._reject(conn, msg, "malformed", f"{type(exc).__name__}: {exc}")
            return None
        return self._admit(conn, msg, verified, records(verified))

    def _admit(
        self, conn: Connection, msg: Message, verified: Verified, recs: list[Record]
    ) -> _Item | None:
        """The replay window, in this process whoever verified the signature."""
        try:
            self.verifier.admit(verified)
        except DuplicateError as exc:
            # Counted, not an error; noted in the quarantine log, which lists everything that
            # arrived and was not forwarded.
            self.stats["duplicates"] += 1
            self.quarantine.add(msg.topic, exc.reason, str(exc), bytes(msg.payload))
            self._ack(conn, msg)
            return None
        except EnvelopeError as exc:
            self._reject(conn, msg, exc.reason, str(exc))
            return None
        self.stats["verified"] += 1
        return _Item(conn, msg, verified, recs)

    def _verify_in_workers(
        self, batch: Sequence[tuple[Connection, Message]], pool: VerifyPool
    ) -> list[_Item]:
        """Telemetry and events of known devices go to the workers; the rest stays here."""
        items: list[_Item] = []
        jobs: list[Job] = []
        owners: list[tuple[Connection, Message]] = []
        for conn, msg in batch:
            parts = msg.topic.split("/")
            known = (
                self.keys.get(parts[2])
                if len(parts) == 4 and parts[3] in ("telemetry", "events")
                else None
            )
            if known is None:  # a birth, an unknown device, a strange topic
                item = self._verify(conn, msg)
                if item is not None:
                    items.append(item)
                continue
            sec1 = self._sec1.get(known.fingerprint)
            if sec1 is None:
                sec1 = self._sec1[known.fingerprint] = public_bytes(known.key)
            jobs.append((msg.topic, bytes(msg.payload), sec1))
            owners.append((conn, msg))
        for (conn, msg), outcome in zip(owners, pool.verify(jobs), strict=True):
            if outcome.verified is None:
                self._reject(conn, msg, outcome.reason, outcome.detail)
                continue
            item = self._admit(conn, msg, outcome.verified, list(outcome.records))
            if item is not None:
                items.append(item)
        return items

    def _recheck_held(self) -> None:
        if not self._held:
            return
        now = time.monotonic()
        ready, waiting = [], []
        for h in self._held:
            device = h.msg.topic.split("/")[2]
            if self.keys.get(device) is not None or now >= h.until:
                ready.append(h)
            else:
                waiting.append(h)
        self._held = waiting
        items = [i for h in ready if (i := self._verify(h.conn, h.msg, held=True)) is not None]
        if items:
            self._forward(items)

    def _process(self, batch: Sequence[tuple[Connection, Message]]) -> None:
        self.stats["received"] += len(batch)
        if self.pool is not None:
            items = self._verify_in_workers(batch, self.pool)
        else:
            items = [i for conn, msg in batch if (i := self._verify(conn, msg)) is not None]
        if items:
            self._forward(items)

    def _forward(self, items: list[_Item]) -> None:
        try:
            for kind, sinks in self.routes.items():
                chosen = [
                    r for i in items if i.verified.signed.envelope.kind == kind for r in i.records
                ]
                if kind == "tickets":
                    chosen = [t for i in items for t in self.ticketing.tickets(i.verified)]
                    self.stats["tickets"] += len(chosen)
                if chosen:
                    for sink in sinks:
                        self._deliver(sink, chosen)
        except StoppedError:
            # Not forwarded everywhere: unacknowledged, so the broker delivers them again.
            for i in items:
                e = i.verified.signed.envelope
                self.verifier.window.forget(e.device, e.boot, e.seq)
            raise
        for i in items:
            self._ack(i.conn, i.msg)
        self.stats["forwarded"] += len(items)
        events = [i.verified for i in items if i.verified.signed.envelope.kind == "events"]
        if events and self.config.receipts:
            self._send_receipts(events)
        if self.on_forwarded is not None:
            self.on_forwarded([i.verified for i in items])

    def _deliver(self, sink: Sink, chosen: list[Record]) -> None:
        def note(error: BaseException | None, _wait: float) -> None:
            self.stats[f"sink_retries_{sink.name}"] += 1
            log.error("sink %s: %s; %d record(s) wait, retrying", sink.name, error, len(chosen))

        retry_until_stopped(
            lambda: sink.deliver(chosen),
            retry_on=SinkError,
            stop=self._stop,
            initial_s=1.0,
            max_s=RECONNECT_MAX_S,
            jitter_s=0.2,
            on_retry=note,
        )

    def _send_receipts(self, events: list[Verified]) -> None:
        """Tell each device which of its events are durably forwarded (best effort)."""
        by_device: dict[str, list[str]] = {}
        for v in events:
            by_device.setdefault(v.signed.envelope.device, []).append(v.key)
        now = int(time.time() * 1000)
        for device, keys in by_device.items():
            payload = json.dumps(body.receipts_content(keys, now)).encode()
            fut = self._publish(topic(device, "receipts"), payload)
            fut.add_done_callback(self._receipt_done)

    def _receipt_done(self, fut: Future[None]) -> None:
        if fut.exception() is not None:
            self.stats["receipt_failures"] += 1
            log.warning("receipt not published: %s", fut.exception())
