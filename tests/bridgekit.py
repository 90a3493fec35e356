"""Helpers for bridge tests: a real webhook receiver, nats-server, configs, bridge processes."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from canvoy.certs import pki
from tests.agentkit import REPO
from tests.conftest import RunningBroker, free_port
from tests.jetstream import NatsCluster, nats_binary
from tests.waiting import wait_for

# A Standard Webhooks secret (whsec_ + base64 of 24 bytes), shared by bridge configs and receivers.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"canvoy test webhook key!").decode()


@dataclass
class Received:
    """One request the receiver got, and whether its signature verified."""

    headers: dict[str, str]
    body: bytes
    verified: bool = False

    @property
    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records POSTs; it can be taken down and back up.

    Like a service desk, it verifies every request with the ``standardwebhooks`` package and
    answers 401 to one that does not verify (recorded with ``verified`` False).
    """

    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    refuse: bytes | None = None  # answer 400 to any body holding these bytes

    def __post_init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/hooks/canvoy"

    def up(self) -> None:
        """Start serving."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                try:
                    Webhook(WEBHOOK_SECRET).verify(data, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                receiver.requests.append(Received(headers, data, verified))
                refused = receiver.refuse is not None and receiver.refuse in data
                status = 400 if refused else receiver.status
                self.send_response(status if verified else 401)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop serving (connections are refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def keys(self) -> list[str]:
        """The Idempotency-Key of every request, in order."""
        return [r.headers["Idempotency-Key"] for r in self.requests]


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    """A running webhook receiver."""
    receiver = WebhookReceiver()
    receiver.up()
    yield receiver
    receiver.down()


@dataclass
class NatsServer:
    """A real ``nats-server -js`` on a free port."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server from Debian's package with JetStream, started for the test."""
    binary = shutil.which("nats-server") or "/usr/bin/nats-server"
    if not Path(binary).exists():
        pytest.fail("nats-server is not installed: run 'make setup' (apt package nats-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "nats.log").open("wb"),
    )
    import socket

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, what="nats-server listening")
    yield NatsServer(port, proc)
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three JetStream nodes in one cluster, started for the test."""
    try:
        nats_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    yield cluster
    cluster.stop()


def bridge_config(
    path: Path,
    broker: RunningBroker,
    *,
    name: str = "b1",
    jsonl: Path | None = None,
    webhook: str | None = None,
    nats: str | list[str] | None = None,
    replicas: int = 1,
    extra: str = "",
) -> Path:
    """A bridge.yaml for identity ``bridge/name`` against ``broker``."""
    folder = pki.identity_dir(broker.certs, "bridge", name)
    sinks, telemetry, events = [], [], []
    if jsonl is not None:
        sinks.append(f"  files: {{type: jsonl, path: '{jsonl}'}}")
        telemetry.append("files")
        events.append("files")
    if webhook is not None:
        secret = path.parent / "webhook-secret"
        secret.write_text(WEBHOOK_SECRET + "\n")
        sinks.append(
            f"  desk: {{type: webhook, url: '{webhook}', secret_file: '{secret}', "
            f"dead_letter: '{path.parent / 'dead'}', retry_min_s: 0.2, retry_max_s: 2}}"
        )
        events.append("desk")
    if nats is not None:
        urls = json.dumps(nats if isinstance(nats, list) else [nats])
        sinks.append(f"  stream: {{type: nats, url: {urls}, replicas: {replicas}, timeout_s: 5}}")
        telemetry.append("stream")
        events.append("stream")
    path.write_text(
        f"""name: {name}
tls: {{ca: "{pki.ca_cert_path(broker.certs)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
crl: "{pki.crl_path(broker.certs)}"
broker: {{host: 127.0.0.1, port: {broker.port}}}
hold_unknown_s: 2
quarantine: "{path.parent / f"quarantine-{name}.jsonl"}"
status_file: "{path.parent / f"status-{name}.json"}"
sinks:
{chr(10).join(sinks)}
routes:
  telemetry: [{", ".join(telemetry)}]
  events: [{", ".join(events)}]
{extra}"""
    )
    return path


def start_bridge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``canvoy bridge run`` as a real process."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "canvoy", "bridge", "run", "--config", str(config)],
            stdout=out,
            stderr=out,
            cwd=REPO,
        )


def bridge_ready(config: Path, name: str = "b1") -> bool:
    """True once the bridge process reported a connection (its subscriptions are in place)."""
    status = config.parent / f"status-{name}.json"
    try:
        return bool(json.loads(status.read_text())["connected"])
    except (OSError, ValueError, KeyError):
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record in a jsonl sink file (missing file: none; a line still being
    written, without its newline, is not read yet)."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line]
