"""The agent's Prometheus metrics, read from the counters its parts already keep, at scrape time.

Nothing here runs on the bus threads: a scrape reads plain integers the collectors, the sealer,
the batcher and the publisher keep anyway, and the outbox's totals through a read-only SQLite
connection of its own (so a scrape never waits for the sealing thread's lock).

Totals kept in the outbox file (evictions, rejected, dropped, confirmed) continue across restarts;
the others count from the start of the process. Both are counters: ``rate()`` handles either.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cryptography import x509
from prometheus_client.core import CounterMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from canvoy import __version__
from canvoy.agent.outbox_status import OutboxStatus, read_status
from canvoy.metrics import Families

if TYPE_CHECKING:
    from canvoy.agent.service import Agent

PREFIX = "canvoy_agent"
log = logging.getLogger(__name__)


def read_outbox(path: str) -> OutboxStatus:
    """The outbox's figures in one read transaction (a consistent snapshot), read-only.

    Raises:
        sqlite3.Error: the file cannot be read.
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.execute("BEGIN")
        return read_status(db)
    finally:
        db.close()


def overdue_events(status: OutboxStatus, deadline_s: float, now_ms: int) -> int:
    """Events (of the outbox's recent log) no bridge has confirmed within ``deadline_s``."""
    deadline_ms = deadline_s * 1000
    return sum(
        1
        for e in status.events_log
        if e.delivered_ms is None and now_ms - e.created_ms > deadline_ms
    )


class _CertExpiry:
    """The certificate's end of validity, parsed again only when the PEM changes."""

    def __init__(self) -> None:
        self._pem = ""
        self._not_after = 0.0

    def not_after(self, pem: str) -> float:
        if pem != self._pem:
            cert = x509.load_pem_x509_certificate(pem.encode())
            self._not_after = cert.not_valid_after_utc.timestamp()
            self._pem = pem
        return self._not_after


_families = Families(PREFIX)
_counter = _families.counter
_gauge = _families.gauge


class AgentMetrics:
    """The collector ``canvoy.metrics.MetricsServer`` calls at each scrape."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._cert = _CertExpiry()

    def collect(self) -> Iterator[Metric]:
        """Every family, as it is now."""
        agent = self._agent
        info = InfoMetricFamily(f"{PREFIX}", "The agent: version, device and policy hash")
        info.add_metric(
            [], {"version": __version__, "device": agent.config.device, "policy": agent.policy.hash}
        )
        yield info
        yield from self._buses()
        yield from self._pipeline()
        try:
            yield from list(self._outbox())
        except sqlite3.Error as exc:  # the file is busy or gone: this scrape goes without it
            log.debug("outbox figures not read for metrics: %s", exc)
        yield from self._link()

    def _buses(self) -> Iterator[Metric]:
        per_bus = {
            "frames": "CAN frames received (replayed or live), by bus",
            "decodes": "Frames decoded (their collected bits changed or a signal was due)",
            "frames_unknown": "Frames whose id no database knows",
            "frames_malformed": "Frames shorter than their message or not decodable",
            "error_frames": "CAN error frames",
            "frames_skipped": "Frames a decoder, the policy or a diagnostic failed on (logged)",
            "bus_errors": "Errors the bus driver reported",
            "bus_reopens": "Times a live bus was opened again after failing",
            "replay_frames": "Frames read from a replayed log",
        }
        families = {
            key: CounterMetricFamily(f"{PREFIX}_{key}_total", doc, labels=["bus"])
            for key, doc in per_bus.items()
        }
        for ch in self._agent.ingest.channels:
            s = ch.collector.stats
            values = {
                "frames": s.frames,
                "decodes": s.decoded,
                "frames_unknown": s.unknown_frames,
                "frames_malformed": s.malformed,
                "error_frames": s.error_frames,
                "frames_skipped": ch.collector.faults.count,
                "bus_errors": ch.collector.bus_errors,
                "bus_reopens": ch.supervisor.reopens if ch.supervisor else 0,
                "replay_frames": ch.replay.frames if ch.replay else 0,
            }
            for key, value in values.items():
                families[key].add_metric([ch.config.name], value)
        yield from families.values()

    def _pipeline(self) -> Iterator[Metric]:
        agent = self._agent
        sealer = agent.sealer.stats
        yield _counter("samples_total", "Samples batched for sealing", agent.batcher.stats.samples)
        yield _counter(
            "samples_dropped_total",
            "Samples dropped because the sealing queue was full",
            sealer.dropped_samples,
        )
        yield _counter(
            "event_envelopes_dropped_total",
            "Event envelopes dropped because the sealing queue was full",
            sealer.dropped_events,
        )
        yield _gauge(
            "sealer_queue_samples", "Samples waiting for the sealing thread", sealer.queued_samples
        )
        sealed = CounterMetricFamily(
            f"{PREFIX}_envelopes_sealed_total",
            "Envelopes signed and committed to the outbox",
            labels=["kind"],
        )
        for kind in ("telemetry", "events"):
            sealed.add_metric([kind], agent.outbox.sealed[kind])
        yield sealed

    def _outbox(self) -> Iterator[Metric]:
        agent = self._agent
        status = read_outbox(str(agent.config.outbox.path))
        c = status.counters
        now_ms = int(time.time() * 1000)
        oldest = (now_ms - status.oldest_ms) / 1000 if status.oldest_ms is not None else 0.0
        yield _gauge("outbox_envelopes", "Envelopes waiting in the outbox", status.depth)
        yield _gauge("outbox_bytes", "Bytes of the envelopes waiting in the outbox", status.bytes)
        yield _gauge(
            "outbox_event_envelopes", "Event envelopes waiting in the outbox", status.events
        )
        yield _gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest unsent envelope (0: none)",
            max(0.0, oldest),
        )
        unconfirmed = status.unconfirmed
        waited = (now_ms - unconfirmed.oldest_sent_ms) / 1000 if unconfirmed.oldest_sent_ms else 0.0
        yield _gauge(
            "unconfirmed_envelopes",
            "Envelopes the broker acknowledged that no bridge has confirmed yet",
            unconfirmed.count,
        )
        yield _gauge(
            "unconfirmed_bytes", "Bytes of the envelopes not yet confirmed", unconfirmed.bytes
        )
        yield _gauge(
            "unconfirmed_oldest_age_seconds",
            "Time since the oldest unconfirmed envelope was sent (0: none)",
            max(0.0, waited),
        )
        yield _counter(
            "outbox_evictions_total", "Envelopes evicted (outbox or disk full)", c.get("evicted", 0)
        )
        yield _counter("outbox_evicted_bytes_total", "Bytes evicted", c.get("evicted_bytes", 0))
        yield _counter(
            "outbox_evicted_event_envelopes_total",
            "Event envelopes evicted",
            c.get("evicted_events", 0),
        )
        yield _counter(
            "envelopes_rejected_total",
            "Envelopes the broker refused (kept aside)",
            c.get("rejected", 0),
        )
        yield _counter(
            "envelopes_dropped_total",
            "Batches with no room even after evicting",
            c.get("dropped", 0),
        )
        yield _counter(
            "envelopes_confirmed_total",
            "Envelopes a bridge confirmed as forwarded",
            c.get("confirmed", 0),
        )
        yield _gauge(
            "events_overdue",
            "Recent event envelopes no bridge confirmed within diagnostics.receipt_deadline_s",
            overdue_events(status, agent.config.diagnostics.receipt_deadline_s, now_ms),
        )

    def _link(self) -> Iterator[Metric]:
        agent = self._agent
        p = agent.publisher.stats
        yield _gauge("connected", "1 while connected to the broker", int(agent.publisher.connected))
        yield _counter("connects_total", "Connections made to the broker", p.connects)
        yield _counter("connection_losses_total", "Connections lost", p.lost_connections)
        yield _counter("publishes_total", "Envelopes published (QoS 1)", p.published)
        yield _counter("envelopes_acknowledged_total", "Envelopes the broker acknowledged", p.acked)
        yield _counter("acknowledged_bytes_total", "Bytes of acknowledged envelopes", p.bytes_acked)
        yield _counter("receipts_total", "Event receipts received from bridges", p.receipts)
        not_after = self._cert.not_after(agent.credentials.cert_pem)
        yield _gauge(
            "certificate_expiry_timestamp_seconds",
            "When the device certificate expires (Unix time)",
            not_after,
        )
        yield _gauge(
            "certificate_remaining_seconds",
            "Seconds until the device certificate expires (negative: expired)",
            not_after - time.time(),
        )
