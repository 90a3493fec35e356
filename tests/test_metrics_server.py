"""The /metrics endpoint itself: its config, a port in use, a collector that fails."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from canvoy.errors import ConfigError
from canvoy.metrics import BridgeMetricsConfig, MetricsConfig, MetricsServer, serve


class Counting:
    """A source whose counter rises at each scrape, and that can be made to fail."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.broken = False

    def collect(self) -> Iterator[Metric]:
        self.scrapes += 1
        if self.broken:
            raise RuntimeError("a part is gone")
        yield CounterMetricFamily("canvoy_test_scrapes_total", "Scrapes", value=self.scrapes)


def names(server: MetricsServer) -> dict[str, float]:
    response = httpx.get(server.url, timeout=5)
    assert response.status_code == 200
    return {
        s.name: s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_off_by_default_with_a_port_per_service() -> None:
    assert serve(MetricsConfig(), Counting(), "test") is None
    assert (MetricsConfig().port, BridgeMetricsConfig().port) == (9731, 9732)
    assert MetricsConfig().host == "127.0.0.1"


@pytest.mark.parametrize(
    ("options", "message"),
    [({"port": 70000}, "port: must be 0..65535"), ({"host": "localhost"}, "host: 'localhost'")],
)
def test_bad_config(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MetricsConfig(**options)  # type: ignore[arg-type]


def test_scrape_reads_the_source_each_time_and_survives_its_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Counting()
    server = serve(MetricsConfig(enabled=True, port=0), source, "test")
    assert server is not None
    try:
        assert names(server)["canvoy_test_scrapes_total"] == 1
        assert names(server)["canvoy_test_scrapes_total"] == 2
        source.broken = True
        with caplog.at_level(logging.WARNING):
            scraped = names(server)  # still 200, with the process metrics
        assert "canvoy_test_scrapes_total" not in scraped
        assert "process_resident_memory_bytes" in scraped
        assert "a scrape failed (1 in all): RuntimeError: a part is gone" in caplog.text
        source.broken = False
        assert names(server)["canvoy_test_scrapes_total"] == 4
    finally:
        server.close()


def test_a_port_in_use_is_logged_and_the_service_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert serve(MetricsConfig(enabled=True, port=port), Counting(), "test") is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
    assert "choose another metrics.port" in caplog.text
