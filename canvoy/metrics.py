"""The Prometheus endpoint shared by the agent and the bridge: its config and its HTTP server.

What each service exposes is a custom collector (``canvoy.agent.metrics``,
``canvoy.bridge.metrics``) that reads the counters the service already keeps when Prometheus
scrapes, so the services' hot paths do no extra work for metrics.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from canvoy.errors import ConfigError

log = logging.getLogger(__name__)

AGENT_PORT = 9731
BRIDGE_PORT = 9732
LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    """Where the Prometheus endpoint listens (``/metrics``); off unless ``enabled``.

    ``port: 0`` takes any free port; the one taken is logged at start.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = AGENT_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"must be 0..65535 (0: any free port), got {self.port}", key="port")
        try:
            ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise ConfigError(
                f"{self.host!r} is not an IP address: give one, e.g. 127.0.0.1 (the endpoint "
                "has no authentication: keep it on loopback behind a scraper or proxy)",
                key="host",
            ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeMetricsConfig(MetricsConfig):
    """The bridge's endpoint: the same keys, another default port."""

    port: int = BRIDGE_PORT


class Source(Protocol):
    """What a service gives the server: metric families, built at scrape time."""

    def collect(self) -> Iterable[Metric]:
        """The families as they are now."""
        ...


class _Confined:
    """A collector whose failure costs one scrape its families, never the service."""

    def __init__(self, source: Source, what: str) -> None:
        self._source = source
        self._what = what
        self.failures = 0
        self._next_log_s = 0.0
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._source.collect())
        except Exception as exc:  # a scrape must not reach the service's own threads
            self._failed(exc)
            families = []
        yield from families

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
            now = time.monotonic()
            if now < self._next_log_s:
                return
            self._next_log_s = now + LOG_EVERY_S
        log.warning(
            "%s metrics: a scrape failed (%d in all): %s: %s",
            self._what,
            self.failures,
            type(exc).__name__,
            exc,
        )


class Families:
    """One-sample metric families named ``<prefix>_<name>`` (``canvoy_agent``, ...)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def counter(self, name: str, doc: str, value: float) -> Metric:
        """A counter family holding ``value``."""
        return CounterMetricFamily(f"{self.prefix}_{name}", doc, value=value)

    def gauge(self, name: str, doc: str, value: float) -> Metric:
        """A gauge family holding ``value``."""
        return GaugeMetricFamily(f"{self.prefix}_{name}", doc, value=value)


class MetricsServer:
    """``/metrics`` over HTTP on its own threads, for one service."""

    def __init__(self, config: MetricsConfig, source: Source, what: str) -> None:
        """Start listening on ``config.host:config.port``.

        Raises:
            ConfigError: the address cannot be listened on (in use, not this host's).
        """
        self.registry = CollectorRegistry()
        self.registry.register(_Confined(source, what))
        ProcessCollector(registry=self.registry)
        try:
            self._server, self._thread = start_http_server(
                config.port, addr=config.host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot listen on {config.host}:{config.port} ({exc.strerror}): "
                "choose another metrics.port, or set metrics.enabled: false"
            ) from exc
        self.host = config.host
        self.port = int(self._server.server_port)
        log.info("%s metrics at http://%s:%d/metrics", what, self.host, self.port)

    @property
    def url(self) -> str:
        """The scrape address."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(config: MetricsConfig, source: Source, what: str) -> MetricsServer | None:
    """Start the endpoint when enabled; a port that cannot be taken is logged, not fatal.

    The service's job (collecting, forwarding) matters more than its metrics: it runs on
    without them, and the error line says what to change.
    """
    if not config.enabled:
        return None
    try:
        return MetricsServer(config, source, what)
    except ConfigError as exc:
        log.error("%s; running without metrics", exc)
        return None
