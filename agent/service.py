"""The running agent: ingest -> batcher -> outbox -> publisher, and an orderly shutdown."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import can

from canvoy import __version__
from canvoy.agent.batch import Batcher
from canvoy.agent.buses import BusConfig
from canvoy.agent.config import AgentConfig, load_device_key
from canvoy.agent.credentials import Credentials
from canvoy.agent.diagnostics import DtcWatcher
from canvoy.agent.episodes import EpisodeTracker
from canvoy.agent.ingest import Ingest, OnOpen
from canvoy.agent.j1939 import Dm1Watcher
from canvoy.agent.metrics import AgentMetrics, overdue_events
from canvoy.agent.obd import ObdPoller
from canvoy.agent.outbox import Outbox
from canvoy.agent.policy import load_policy
from canvoy.agent.progress import ReplayProgress
from canvoy.agent.publish import Identity, Publisher
from canvoy.agent.sealer import Sealer
from canvoy.agent.triggers import TriggerWatcher
from canvoy.metrics import MetricsServer, serve
from canvoy.wire import body
from canvoy.wire.envelope import Envelope, sign
from canvoy.wire.events import AgentEvent

log = logging.getLogger(__name__)

TICK_S = 0.05
STATUS_EVERY_S = 1.0


def status_path(outbox: Path) -> Path:
    """Where the running agent writes its live status (next to the outbox)."""
    return outbox.with_name(outbox.name + ".status.json")


class Agent:
    """One device's agent. ``run`` blocks until ``stop`` (SIGTERM) or, if asked, until every
    replayed log has ended and the outbox is empty."""

    def __init__(self, config: AgentConfig) -> None:
        """Build every part from ``config``; nothing is started yet.

        Raises:
            ConfigError: a key, certificate, database or policy is unusable.
            StoreError: the outbox cannot be opened.
        """
        self.config = config
        self.boot = os.urandom(16)
        self.key, cert_pem = load_device_key(config)
        # Read again before each connection: an expired certificate does not stop collection.
        self.credentials = Credentials(config.device, config.tls, self.key, cert_pem)
        self.policy = load_policy(config.policy)
        self.outbox = Outbox(
            config.outbox,
            device=config.device,
            boot=self.boot,
            key=self.key,
            delivery=config.delivery,
        )
        self.batcher = Batcher(config.batch, self.outbox.seal, self.policy.hash)
        # Bus threads hand samples and events to the sealing thread, which owns the batcher.
        self.sealer = Sealer(
            self.batcher,
            self.outbox.reserve,
            max_samples=config.batch.queue_samples,
            max_events=config.batch.queue_events,
        )
        # One tracker for every source's fault episodes, continuing those open at the last stop.
        restored = self.outbox.open_episodes()
        self.episodes = EpisodeTracker(
            self.sealer.add_events, restored, resume_s=config.diagnostics.resume_s
        )
        if restored:
            codes = ", ".join(f"{e.code} ({e.scope})" for e in restored)
            log.info("continuing %d open episode(s): %s", len(restored), codes)
            note = AgentEvent(
                t_ms=int(time.time() * 1000),
                what="episodes_resumed",
                detail=f"{len(restored)} episode(s) open at the last stop: {codes}"[:1024],
            )
            self.sealer.add_events([note])
        self.dtcs = DtcWatcher(config.diagnostics, self.episodes)
        self.triggers = TriggerWatcher(
            config.diagnostics.triggers, self.episodes, self.dtcs.context
        )
        self.dm1: list[Dm1Watcher] = []
        self.obd: list[ObdPoller] = []
        # Every sample goes to the sealing thread's queue, the DTC watcher and the triggers.
        self._emit = self.dtcs.wrap(self.triggers.wrap(self.sealer.offer))
        self.ingest = Ingest(
            config.buses,
            self.policy,
            self._emit,
            taps=self._taps,
            on_open=self._obd,
            room=self.sealer.has_room,
        )
        self.publisher = Publisher(
            config.mqtt,
            Identity(config.device, self.credentials),
            self.outbox,
            birth=lambda: self._status("online"),
            will=lambda: self._status("offline", lost=True),
        )
        self.metrics: MetricsServer | None = None
        self.progress = ReplayProgress(self.ingest.channels)
        self._stop = threading.Event()
        self.started = time.time()
        self.state = "starting"

    def _taps(self, bus: BusConfig, j1939: bool) -> list[can.Listener]:
        if not j1939:
            return []
        watcher = Dm1Watcher(bus.name, self.episodes)
        self.dm1.append(watcher)
        return [watcher]

    def _obd(self, bus: BusConfig) -> OnOpen | None:
        """For a bus with ``obd``: start an OBD-II poller each time the bus opens."""
        config = bus.obd
        if config is None:
            return None

        def start(live: can.BusABC, notifier: can.Notifier) -> Callable[[], None]:
            poller = ObdPoller(
                bus.name,
                live,
                notifier,
                config,
                emit=self._emit,
                episodes=self.episodes,
            )
            poller.start()
            self.obd.append(poller)
            return poller.stop

        return start

    def _status(self, state: body.State, *, lost: bool = False) -> bytes:
        now_ms = int(time.time() * 1000)
        overdue = overdue_events(
            self.outbox.status(), self.config.diagnostics.receipt_deadline_s, now_ms
        )
        content = body.status_content(
            body.Status(
                state=state,
                agent=__version__,
                policy=self.policy.hash,
                cert_pem=self.credentials.cert_pem,
                outbox_depth=self.outbox.depth(),
                connected_ms=self.publisher.connected_ms,
                heartbeat_s=self.config.mqtt.heartbeat_s,
                overdue=overdue,
                lost=lost,
            )
        )
        encoding, data = body.encode(content)
        # Status is outside the sequence (seq 0): receivers keep the newest by created_ms.
        envelope = Envelope(
            device=self.config.device,
            boot=self.boot,
            seq=0,
            kind="status",
            created_ms=now_ms,
            encoding=encoding,
            body=data,
        )
        return sign(envelope, self.key)

    def stop(self) -> None:
        """Ask ``run`` to shut down (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, exit_when_done: bool = False) -> int:
        """Run until stopped; return the exit code (0 after an orderly shutdown)."""
        c = self.config
        sources = ", ".join(
            f"{b.name} ({b.interface}:{b.channel})"
            if b.replay is None
            else f"{b.name} ({b.replay})"
            for b in c.buses
        )
        log.info(
            "agent %s (canvoy %s) starting: buses %s; outbox %s; broker %s:%d",
            c.device,
            __version__,
            sources,
            c.outbox.path,
            c.mqtt.host,
            c.mqtt.port,
        )
        self.metrics = serve(c.metrics, AgentMetrics(self), "agent")
        self.sealer.start()
        self.publisher.start()
        self.ingest.start()
        self.progress.start()
        self.state = "running"
        next_status = 0.0
        try:
            while not self._stop.wait(TICK_S):
                self.dtcs.tick()
                self.episodes.tick(int(time.time() * 1000))
                now = time.monotonic()
                if now >= next_status:
                    self.write_status()
                    next_status = now + STATUS_EVERY_S
                if exit_when_done and self.ingest.replays_done():
                    self._await_receipts()
                    break
        finally:
            self.shutdown()
        return 0

    def _await_receipts(self, timeout_s: float = 15.0) -> None:
        """Before a replay run exits: seal the last batch and wait a little for the bridges'
        receipts of its events, so that ``canvoy agent status`` can show them delivered."""
        self.dtcs.tick(settle_s=0.0)
        self.triggers.flush()
        self.sealer.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            log_ = self.outbox.status().events_log
            if all(e.delivered_ms is not None for e in log_):
                return
            self._stop.wait(0.2)

    def shutdown(self) -> None:
        """Stop ingest, seal the open batch, wait for acknowledgements, say goodbye."""
        timeout = self.config.shutdown_timeout_s
        self.ingest.stop()
        self.dtcs.tick(settle_s=0.0)
        self.triggers.flush()
        self.sealer.stop()
        drained = self.publisher.drain(timeout)
        if not drained:
            unsent = self.outbox.unsent()
            log.warning(
                "shutdown: within %s s, %d envelope(s) were not acknowledged by the broker and "
                "%d not confirmed by a bridge; they stay in the outbox and are sent again "
                "at the next start",
                timeout,
                unsent,
                self.outbox.depth() - unsent,
            )
        self.publisher.stop(goodbye=self._status("offline"))
        self.state = "stopped"
        log.info(
            "agent %s stopped; %d envelope(s) left in the outbox",
            self.config.device,
            self.outbox.depth(),
        )
        self.write_status()
        if self.metrics is not None:
            self.metrics.close()
        self.outbox.close()

    def snapshot(self) -> dict[str, Any]:
        """Live figures of every part, for the status file and the demo."""
        channels = {}
        for ch in self.ingest.channels:
            s = ch.collector.stats
            channels[ch.config.name] = {
                "frames": s.frames,
                "decoded": s.decoded,
                "repeated": s.repeated,
                "unknown": s.unknown_frames,
                "malformed": s.malformed,
                "error_frames": s.error_frames,
                "bus_errors": ch.collector.bus_errors,
                "listener_errors": ch.collector.faults.count,
                "reopens": ch.supervisor.reopens if ch.supervisor else 0,
                "replay_bad_lines": ch.replay.bad_lines if ch.replay else 0,
            }
        return {
            "device": self.config.device,
            "boot": self.boot.hex(),
            "pid": os.getpid(),
            "updated_ms": int(time.time() * 1000),
            "started_ms": int(self.started * 1000),
            "state": self.state,
            "connected": self.publisher.connected,
            "buses": channels,
            "replays": self.progress.snapshot(),
            "batches": asdict(self.batcher.stats),
            "episodes": {
                "open": self.episodes.open_count,
                "resumed": self.episodes.resumed,
                "opened": self.episodes.opened,
                "updated": self.episodes.updated,
                "closed": self.episodes.closed,
            },
            "sealer": asdict(self.sealer.stats),
            "publisher": asdict(self.publisher.stats),
        }

    def write_status(self) -> None:
        """Write the live status file atomically; a failure is logged, never fatal."""
        path = status_path(self.config.outbox.path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.snapshot(), indent=1))
            tmp.replace(path)
        except OSError as exc:
            log.debug("status file %s not written: %s", path, exc)
