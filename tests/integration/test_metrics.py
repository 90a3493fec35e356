"""Acceptance 2 of issue 17: /metrics of a running agent and bridge, scraped over real HTTP."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from canvoy import __version__
from canvoy.certs import pki
from tests.agentkit import REPO, agent_config, drive_log, start_agent, stop
from tests.bridgekit import bridge_config, bridge_ready, start_bridge
from tests.conftest import RunningBroker, free_port
from tests.waiting import wait_for

pytestmark = pytest.mark.integration
DASHBOARD = REPO / "deploy" / "grafana.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus_client's own text parser."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    response.raise_for_status()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError: the series is not exposed)."""
    return samples[(name, tuple(sorted(labels.items())))]


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except httpx.HTTPError:
        return None


def garbage_publish(broker: RunningBroker, device: str) -> subprocess.CompletedProcess[str]:
    """What a broken (or hostile) device does: not an envelope, on its own telemetry topic."""
    folder = pki.identity_dir(broker.certs, "device", device)
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "--cafile",
            str(pki.ca_cert_path(broker.certs)),
            "--cert",
            str(folder / "cert.pem"),
            "--key",
            str(folder / "key.pem"),
            "-t",
            f"canvoy/v1/{device}/telemetry",
            "-m",
            "not an envelope",
            "-q",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
def test_agent_and_bridge_metrics_rise(broker: RunningBroker, tmp_path: Path) -> None:
    agent_port, bridge_port = free_port(), free_port()
    bridge_yaml = bridge_config(
        tmp_path / "bridge.yaml",
        broker,
        jsonl=tmp_path / "out.jsonl",
        extra=f"metrics: {{enabled: true, port: {bridge_port}}}\n",
    )
    bridge = start_bridge(bridge_yaml, tmp_path / "bridge.log")
    log = drive_log(tmp_path / "drive.log", 5.0)
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=log,
        speed="realtime",
        loop=True,
        extra=f"metrics: {{enabled: true, port: {agent_port}}}\n",
    )
    agent = start_agent(agent_yaml, tmp_path / "agent.log")
    try:
        wait_for(lambda: bridge_ready(bridge_yaml), 30, "bridge connected")
        wait_for(lambda: try_scrape(agent_port), 30, "agent /metrics answers")
        first = scrape(agent_port)

        def risen() -> bool:
            now = scrape(agent_port)
            return all(
                value(now, name, **labels) > value(first, name, **labels)
                for name, labels in (
                    ("canvoy_agent_frames_total", {"bus": "pt"}),
                    ("canvoy_agent_envelopes_sealed_total", {"kind": "telemetry"}),
                    ("canvoy_agent_envelopes_acknowledged_total", {}),
                )
            )

        wait_for(risen, 30, "the agent's frame and envelope counters rising")
        now = scrape(agent_port)
        assert value(now, "canvoy_agent_connected") == 1
        assert value(now, "canvoy_agent_certificate_remaining_seconds") > 300 * 86400
        info = [dict(labels) for (name, labels) in now if name == "canvoy_agent_info"]
        assert info == [{"device": "car-1", "policy": info[0]["policy"], "version": __version__}]

        def bridge_forwarding() -> bool:
            s = scrape(bridge_port)
            return value(s, "canvoy_bridge_records_forwarded_total", sink="files") > 0

        wait_for(bridge_forwarding, 30, "the bridge forwarding the agent's telemetry")
        before = scrape(bridge_port)
        assert value(before, "canvoy_bridge_messages_rejected_total", reason="malformed") == 0
        assert value(before, "canvoy_bridge_known_devices") >= 1
        assert value(before, "canvoy_bridge_sink_delivery_seconds_count", sink="files") > 0

        published = garbage_publish(broker, "car-2")
        assert published.returncode == 0, published.stderr

        def rejected() -> float:
            s = scrape(bridge_port)
            return value(s, "canvoy_bridge_messages_rejected_total", reason="malformed")

        wait_for(lambda: rejected() == 1, 30, "the garbage publish counted as malformed")
        after = scrape(bridge_port)
        assert value(after, "canvoy_bridge_messages_received_total") > value(
            before, "canvoy_bridge_messages_received_total"
        )
        # The dashboard asks only for series the two endpoints expose.
        exposed = {name for name, _labels in [*now, *after]}
        wanted = set(re.findall(r"canvoy_[a-z_]+", DASHBOARD.read_text()))
        assert wanted and wanted <= exposed, sorted(wanted - exposed)
    finally:
        assert stop(agent) == 0
        assert stop(bridge) == 0
    assert try_scrape(agent_port) is None  # the port is released at shutdown


def test_after_sigkill_a_restarted_agent_takes_its_port_again(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """As under systemd's Restart=always: killed with a scrape open, started again on the same
    port (no "address in use" from the killed process's socket)."""
    port = free_port()
    config = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "drive.log", 5.0),
        speed="realtime",
        loop=True,
        extra=f"metrics: {{enabled: true, port: {port}}}\n",
    )
    first = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(
            lambda: (
                (s := try_scrape(port)) is not None
                and value(s, "canvoy_agent_envelopes_acknowledged_total") > 0
            ),
            30,
            "acknowledgements counted",
        )
        with httpx.stream("GET", f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            first.send_signal(signal.SIGKILL)  # while a scrape is open
            first.wait(10)
            assert response.status_code == 200
    finally:
        if first.poll() is None:
            first.kill()
    second = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: try_scrape(port) is not None, 30, "the port taken again")
        s = scrape(port)
        assert value(s, "canvoy_agent_connects_total") <= 1  # a new process: counters anew
    finally:
        assert stop(second) == 0


def test_an_outbox_that_cannot_be_read_costs_only_its_own_series(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Someone removes the outbox file under a running agent: scrapes still answer."""
    port = free_port()
    outbox = tmp_path / "outbox.sqlite"
    config = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive_log(tmp_path / "drive.log", 5.0),
        speed="realtime",
        loop=True,
        outbox=outbox,
        extra=f"metrics: {{enabled: true, port: {port}}}\n",
    )
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: try_scrape(port) is not None, 30, "/metrics answers")
        assert ("canvoy_agent_outbox_envelopes", ()) in scrape(port)
        for part in tmp_path.glob("outbox.sqlite*"):
            part.unlink()
        s = scrape(port)
        assert ("canvoy_agent_outbox_envelopes", ()) not in s
        first = value(s, "canvoy_agent_frames_total", bus="pt")
        wait_for(
            lambda: value(scrape(port), "canvoy_agent_frames_total", bus="pt") > first,
            30,
            "ingest going on",
        )
    finally:
        assert stop(agent) == 0
