"""The running bridge: subscribe, verify, spool for every routed sink, then acknowledge.

Threads: ``mqtt`` keeps the connection up (persistent session, shared subscriptions); the main
thread takes received messages in batches, verifies them (in worker processes where it can),
applies the replay window, and writes the records for each routed sink to the state file
(``bridge/state.py``) in one transaction with the window before it acknowledges the messages;
one ``sink-<name>`` thread per sink (``bridge/delivery.py``) feeds that sink from its spool.

Confinement: whatever goes wrong with one message (a malformed or hostile payload, a bug in the
bridge's own code, a result that does not travel back from a worker) is quarantined with a
reason (``internal`` for the bridge's own failures, payload kept), acknowledged and counted; the
loop goes on. A sink that is down holds back only its own spool; a record a sink can never take
becomes a dead letter at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from pathlib import Path

from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.confirm import Confirmations
from canvoy.bridge.delivery import RETRY_INITIAL_S, RETRY_MAX_S, SinkQueue, retry
from canvoy.bridge.metrics import BridgeMetrics
from canvoy.bridge.pipeline import Batch, Pipeline, Received
from canvoy.bridge.quarantine import Quarantine
from canvoy.bridge.sinks.base import Sink, SinkContext, build_sink
from canvoy.bridge.state import BridgeState
from canvoy.bridge.verify import ReplayWindow, Verifier
from canvoy.bridge.workers import VerifyPool
from canvoy.errors import (
    CanvoyError,
    ConfigError,
    ConnectionLostError,
    StoreError,
    TransportError,
)
from canvoy.metrics import MetricsServer, serve
from canvoy.transport.backoff import StoppedError
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire.errors import EnvelopeError
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.topics import PREFIX, topic

log = logging.getLogger(__name__)
CRL_CHECK_S = 5.0
FLAP_S = 10.0  # a connection the broker closes sooner than this makes the next one wait
FLAPS_TOLD, FLAPS_LOGGED = 3, 20  # the cause is logged at the 3rd flap in a row, 23rd, ...
REPORT_S = 10.0


def state_path(config: BridgeConfig) -> Path:
    """The bridge's state file: next to its quarantine log, named after the bridge."""
    return config.quarantine.with_name(f"{config.name}.state.sqlite")


class Bridge:
    """One bridge process; ``run`` blocks until ``stop``."""

    def __init__(self, config: BridgeConfig) -> None:
        """Load the fleet CA, CRL, known devices and the state file, and build the sinks.

        Raises:
            ConfigError: a file or a sink option is unusable.
            PKIError: the CA or CRL is not usable.
            StoreError: the state file cannot be used.
        """
        self.config = config
        try:
            ca_pem = config.tls.ca.read_bytes()
            crl_pem = config.crl.read_bytes() if config.crl else None
        except OSError as exc:
            raise ConfigError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        self.keys = DeviceKeys(ca_pem, crl_pem)
        self._crl_mtime = self._crl_stamp()
        if config.known_devices is not None:
            log.info("preloaded %d device certificate(s)", self.keys.preload(config.known_devices))
        self.stats: Counter[str] = Counter()
        self.state = BridgeState(state_path(config), config.replay_window)
        window = ReplayWindow(config.replay_window)
        for device, boot, seq in self.state.seen():
            with contextlib.suppress(EnvelopeError):
                window.admit(device, boot, seq)
        for device, pem in self.state.certs():
            try:
                self.keys.learn(device, pem)
            except EnvelopeError as exc:
                log.info("a stored certificate of %s is no longer trusted: %s", device, exc)
                self.state.forget_cert(device, pem)
        self.verifier = Verifier(self.keys, window)
        self.verifier.restore_statuses(self.state.statuses())
        self.quarantine = Quarantine(config.quarantine)
        self.tls = config.tls.context()
        context = SinkContext(publish=self._publish)
        self.sinks: dict[str, Sink] = {
            name: build_sink(name, options, context) for name, options in config.sinks.items()
        }
        self._stop = threading.Event()
        self._settled: queue.Queue[list[str]] = queue.Queue()
        self.queues = {
            name: SinkQueue(sink, self.state.path, self._stop, self.stats, self._settled.put)
            for name, sink in self.sinks.items()
        }
        workers = config.verify_workers
        if workers is None:
            cores = os.cpu_count() or 1
            workers = min(4, cores) if cores > 1 else 0
        self.pool = VerifyPool(workers) if workers > 0 else None
        self.pipeline = Pipeline(config, self.verifier, self.quarantine, self.pool, self.stats)
        self._queue: queue.Queue[Received] = queue.Queue()
        self._receipts: dict[str, str] = {}  # events envelope -> device, until settled
        self.confirmations = Confirmations(config.confirm_interval_s)
        self._reload = threading.Event()
        self._report_now = threading.Event()  # set by the mqtt thread; the main thread reports
        self._conn: Connection | None = None
        self._connected = threading.Event()
        self.metrics: MetricsServer | None = None
        self._keeper = threading.Thread(target=self._keep_connected, name="mqtt", daemon=True)

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up."""
        return self._connected.is_set()

    def queue_depth(self) -> int:
        """Messages received and not yet taken by the main loop."""
        return self._queue.qsize()

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
        subscriptions = self._subscriptions()
        try:
            conn.subscribe(subscriptions)
        except TransportError:
            conn.close(timeout_s=0.1)  # this attempt failed: its network thread ends with it
            raise
        log.info(
            "bridge %s connected to %s:%d (session %s); subscribed to %s",
            c.name,
            c.broker.host,
            c.broker.port,
            "resumed" if connack.session_present else "new",
            ", ".join(t for t, _q in subscriptions),
        )
        return conn

    def _keep_connected(self) -> None:
        def note(error: BaseException | None, _wait: float) -> None:
            log.error("bridge cannot connect: %s", error)
            self.stats["connect_failures"] += 1

        flaps = 0  # connections in a row that the broker closed soon after they began
        while not self._stop.is_set():
            if flaps and self._stop.wait(min(RETRY_MAX_S, RETRY_INITIAL_S * 2 ** (flaps - 1))):
                return
            try:
                conn = retry(self._connect_once, TransportError, self._stop, note)
            except StoppedError:
                return
            began = time.monotonic()
            self._conn = conn
            self._connected.set()
            self.stats["connects"] += 1
            self._report_now.set()
            while not self._stop.is_set() and not conn.closed.done():
                self._stop.wait(0.2)
            self._connected.clear()
            if self._stop.is_set():
                return
            flaps = flaps + 1 if time.monotonic() - began < FLAP_S else 0
            if flaps % FLAPS_LOGGED == FLAPS_TOLD:
                # Two processes with one identity take the session from each other: without the
                # wait above they did so several times a second, for as long as both ran.
                log.error(
                    "bridge %s: the broker closed %d connections in a row within %.0f s of "
                    "their start: most likely another bridge runs with the same name and "
                    "certificate; give each instance its own ('canvoy certs issue bridge NAME' "
                    "and name: NAME in its config). Reconnecting with back-off",
                    self.config.name,
                    flaps,
                    FLAP_S,
                )
            else:
                log.warning("bridge lost its connection: %s", conn.closed.result())

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to return (safe from a signal handler)."""
        self._stop.set()

    def reload(self) -> None:
        """Ask ``run`` to reload the CRL (safe from a signal handler: SIGHUP)."""
        self._reload.set()

    def run(self, *, until: Callable[[], bool] | None = None) -> int:
        """Run until ``stop`` (or until ``until()`` is true); return the exit code."""
        self.metrics = serve(self.config.metrics, BridgeMetrics(self), "bridge")
        for q in self.queues.values():
            q.start()
        self._keeper.start()
        next_report = time.monotonic() + REPORT_S
        next_crl = time.monotonic() + CRL_CHECK_S
        try:
            while not self._stop.is_set():
                batch = self._take()
                if batch:
                    self._commit(self.pipeline.process(batch))
                if self.pipeline.held:
                    self._commit(self.pipeline.recheck_held())
                self._send_confirmations()
                now = time.monotonic()
                if self._reload.is_set() or now >= next_crl:
                    self._check_crl(forced=self._reload.is_set())
                    next_crl = now + CRL_CHECK_S
                if now >= next_report or self._report_now.is_set():
                    self._report_now.clear()
                    self._report()
                    next_report = now + REPORT_S
                if until is not None and until():
                    break
        except StoppedError:
            pass
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self._stop.set()
        for q in self.queues.values():
            q.notify()
            q.join(5)
        self._keeper.join(5)
        conn = self._conn
        if conn is not None and conn.connected:
            conn.close()
        for sink in self.sinks.values():
            sink.close()
        if self.pool is not None:
            self.pool.close()
        self._report()
        if self.metrics is not None:
            self.metrics.close()
        self.state.close()

    def _take(self) -> list[Received]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        size = len(first[1].payload)
        # Both bounds: a batch's records are what the main thread holds at once (PROTOCOL.md).
        while len(batch) < self.config.batch_max and size < self.config.batch_max_bytes:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
            size += len(item[1].payload)
        return batch

    # -- state, acknowledgements, receipts -----------------------------------------------------

    def _commit(self, batch: Batch) -> None:
        """Write the batch's state durably, then acknowledge its messages and wake the sinks."""
        if not (batch.acks or batch.statuses or batch.certs):
            return

        def note(error: BaseException | None, wait_s: float) -> None:
            self.stats["state_failures"] += 1
            log.error(
                "%s; nothing is acknowledged until it works (next try in %.0f s)", error, wait_s
            )

        write = partial(
            self.state.commit,
            admitted=batch.admitted,
            statuses=batch.statuses,
            certs=batch.certs,
            spooled=batch.spooled,
            dead=batch.dead,
        )
        try:
            retry(write, StoreError, self._stop, note)
        except StoppedError:
            self.pipeline.forget(batch)  # unacknowledged: the broker delivers them again
            raise
        except Exception:  # the bridge's own bug on something in the batch: find which message
            log.exception("the state of a batch of %d message(s) was not written", len(batch.acks))
            self.pipeline.forget(batch)
            if len(batch.acks) <= 1:
                for received in batch.acks:
                    self.pipeline.reject_internal(received, "its state could not be written")
                    self._ack(*received)
                return
            for received in batch.acks:
                self._commit(self.pipeline.process([received]))
            return
        for conn, msg in batch.acks:
            self._ack(conn, msg)
        if batch.dead:
            self.stats["dead_lettered"] += len(batch.dead)
            log.error("%d record(s) too large for any sink set aside", len(batch.dead))
        routed = {row[2] for row in batch.spooled}
        self.stats["forwarded"] += len(batch.forwarded)
        for v in batch.forwarded:
            e = v.signed.envelope
            if e.kind == "events" and self.config.receipts:
                self._receipts[e.key] = e.device
        settled = [
            v.key
            for v in batch.forwarded
            if v.key not in routed and v.signed.envelope.kind in ("telemetry", "events")
        ]
        settled += [key for key in batch.confirm if not self._holds(key)]
        if settled:
            self._settled.put(settled)
        sinks = {row[0] for row in batch.spooled}
        for name in sinks:
            self.queues[name].notify()

    @staticmethod
    def _ack(conn: Connection, msg: Message) -> None:
        if conn.connected:
            conn.ack(msg.mid, msg.qos)
        # else: the broker redelivers it on the next connection; it is then a duplicate.

    def _holds(self, envelope: str) -> bool:
        """True while a sink still has ``envelope`` to take (its settlement confirms it then);
        a state file that cannot be read says no: a confirmation too many costs nothing."""
        try:
            return self.state.holds(envelope)
        except StoreError as exc:
            log.warning("%s; confirming %s again now", exc, envelope)
            return False

    def _send_confirmations(self) -> None:
        """Tell each device which of its envelopes every routed sink has taken, at most every
        ``confirm_interval_s`` per device; events are also named (receipts). Best effort: a
        confirmation lost makes the device publish the envelope again, and it is confirmed
        again then."""
        while True:
            try:
                settled = self._settled.get_nowait()
            except queue.Empty:
                break
            for key in settled:
                event = self._receipts.pop(key, None) is not None
                self.confirmations.add(key, event=event)
        if not self._connected.is_set():
            return  # kept until the connection is back
        for device, payload in self.confirmations.due():
            fut = self._publish(topic(device, "receipts"), payload)
            fut.add_done_callback(self._confirmation_done)
            self.stats["confirmations"] += 1

    def _confirmation_done(self, fut: Future[None]) -> None:
        if fut.exception() is not None:
            self.stats["confirmation_failures"] += 1
            log.warning("confirmation not published: %s", fut.exception())

    # -- revocation ------------------------------------------------------------------------------

    def _crl_stamp(self) -> tuple[int, int] | None:
        path = self.config.crl
        try:
            st = path.stat() if path is not None else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st is not None else None

    def _check_crl(self, *, forced: bool) -> None:
        """Reload the CRL on SIGHUP or when the file changed; a bad file keeps the old list."""
        self._reload.clear()
        path = self.config.crl
        stamp = self._crl_stamp()
        if path is None or (stamp == self._crl_mtime and not forced):
            return
        self._crl_mtime = stamp
        try:
            dropped = self.keys.load_crl(path.read_bytes())
        except (OSError, CanvoyError) as exc:
            self.stats["crl_failures"] += 1
            log.error("CRL %s not reloaded, the previous list stays in force: %s", path, exc)
            return
        self.stats["crl_reloads"] += 1
        log.info("CRL %s reloaded; keys dropped for: %s", path, ", ".join(dropped) or "none")

    # -- reporting -------------------------------------------------------------------------------

    def _report(self) -> None:
        try:
            spool, dead = self.state.depth(), self.state.dead_letters()
        except Exception:  # the report must not stop the bridge
            spool, dead = {}, {}
        report = {
            "name": self.config.name,
            "updated_ms": int(time.time() * 1000),
            "connected": self._connected.is_set(),
            "counts": dict(self.stats),
            "quarantined": dict(self.quarantine.counts),
            "held": len(self.pipeline.held),
            "queued": self._queue.qsize(),
            "spool": spool,
            "dead_letters": dead,
        }
        log.debug("bridge: %s", json.dumps(report["counts"]))
        path = self.config.status_file
        if path is not None:
            tmp = path.with_name(path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(report, indent=1))
                tmp.replace(path)
            except OSError as exc:
                log.warning("status file %s not written: %s", path, exc)
