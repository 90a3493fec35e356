"""The bridge's Prometheus metrics, read at scrape time from the counters the bridge keeps.

The main loop and the sink threads count into ``Bridge.stats`` as they always have; a scrape
copies that counter, reads each sink queue's figures and the spool depths through a read-only
SQLite connection of its own. Every totals series is there from the first scrape (rejections at
0 for every reason), so ``increase()`` sees the first one.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric

from canvoy import __version__
from canvoy.bridge.state import read_depths
from canvoy.metrics import Families

if TYPE_CHECKING:
    from canvoy.bridge.service import Bridge

PREFIX = "canvoy_bridge"
log = logging.getLogger(__name__)
# The quarantine reasons of docs/PROTOCOL.md, "Verification by a bridge".
REASONS = (
    "oversize",
    "malformed",
    "unknown_version",
    "identity_mismatch",
    "unknown_device",
    "revoked",
    "bad_signature",
    "replay",
    "internal",
)


_families = Families(PREFIX)
_counter = _families.counter
_gauge = _families.gauge


class BridgeMetrics:
    """The collector ``canvoy.metrics.MetricsServer`` calls at each scrape."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    def collect(self) -> Iterator[Metric]:
        """Every family, as it is now."""
        bridge = self._bridge
        stats = dict(bridge.stats)  # one copy: the threads go on counting meanwhile
        info = InfoMetricFamily(PREFIX, "The bridge: version and name")
        info.add_metric([], {"version": __version__, "name": bridge.config.name})
        yield info
        yield _counter(
            "messages_received_total", "Messages received from the broker", stats.get("received", 0)
        )
        yield _counter(
            "messages_verified_total", "Messages verified and admitted", stats.get("verified", 0)
        )
        yield _counter(
            "messages_duplicate_total",
            "Redeliveries dropped (not an error)",
            stats.get("duplicates", 0),
        )
        rejected = CounterMetricFamily(
            f"{PREFIX}_messages_rejected_total",
            "Messages quarantined, by reason (docs/PROTOCOL.md)",
            labels=["reason"],
        )
        reasons = {*REASONS, *(k[len("rejected_") :] for k in stats if k.startswith("rejected_"))}
        for reason in sorted(reasons):
            rejected.add_metric([reason], stats.get(f"rejected_{reason}", 0))
        yield rejected
        yield _gauge(
            "messages_held",
            "Messages held until their device's key is known",
            len(bridge.pipeline.held),
        )
        yield _gauge(
            "messages_queued",
            "Messages received and not yet taken by the main loop",
            bridge.queue_depth(),
        )
        yield _gauge("known_devices", "Devices with a trusted key", bridge.keys.known())
        yield _gauge("connected", "1 while connected to the broker", int(bridge.connected))
        yield _counter("connects_total", "Connections made to the broker", stats.get("connects", 0))
        yield _counter(
            "confirmations_total",
            "Confirmations published to devices (ranges of forwarded envelopes, and receipts)",
            stats.get("confirmations", 0),
        )
        yield _counter(
            "confirmation_failures_total",
            "Confirmations that could not be published (the device publishes again)",
            stats.get("confirmation_failures", 0),
        )
        yield _counter(
            "state_failures_total",
            "Writes of the state file that failed (retried)",
            stats.get("state_failures", 0),
        )
        yield from self._sinks(stats)

    def _sinks(self, stats: dict[str, int]) -> Iterator[Metric]:
        bridge = self._bridge
        depths: tuple[dict[str, int], dict[str, int]] | None
        try:
            depths = read_depths(bridge.state.path)
        except sqlite3.Error as exc:  # busy or gone: this scrape goes without the depths
            log.debug("spool depths not read for metrics: %s", exc)
            depths = None
        spool, dead = depths or ({}, {})
        families = {
            "forwarded": CounterMetricFamily(
                f"{PREFIX}_records_forwarded_total", "Records a sink accepted", labels=["sink"]
            ),
            "dead_lettered": CounterMetricFamily(
                f"{PREFIX}_records_dead_lettered_total",
                "Records a sink can never take, set aside",
                labels=["sink"],
            ),
            "sink_retries": CounterMetricFamily(
                f"{PREFIX}_sink_retries_total",
                "Deliveries retried while a sink was down",
                labels=["sink"],
            ),
        }
        queued = GaugeMetricFamily(
            f"{PREFIX}_sink_queue_records",
            "Records spooled and waiting for the sink",
            labels=["sink"],
        )
        dead_now = GaugeMetricFamily(
            f"{PREFIX}_sink_dead_letters", "Dead letters kept in the state file", labels=["sink"]
        )
        down = GaugeMetricFamily(
            f"{PREFIX}_sink_down_seconds",
            "How long the sink has refused deliveries (0: up)",
            labels=["sink"],
        )
        latency = SummaryMetricFamily(
            f"{PREFIX}_sink_delivery_seconds",
            "Time a sink took to accept a delivery",
            labels=["sink"],
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_sink_last_delivery_seconds",
            "Time the last accepted delivery took",
            labels=["sink"],
        )
        now = time.monotonic()
        for name, q in bridge.queues.items():
            for key, family in families.items():
                family.add_metric([name], stats.get(f"{key}_{name}", 0))
            queued.add_metric([name], spool.get(name, 0))
            dead_now.add_metric([name], dead.get(name, 0))
            since = q.down_since
            down.add_metric([name], now - since if since is not None else 0.0)
            latency.add_metric([name], count_value=q.deliveries, sum_value=q.latency_sum_s)
            last.add_metric([name], q.latency_s)
        yield from families.values()
        if depths is not None:
            yield from (queued, dead_now)
        yield from (down, latency, last)
