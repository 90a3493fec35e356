"""A real three-node NATS JetStream cluster on free 127.0.0.1 ports, and a reader of a stream.

Used by the integration tests (the ``nats_cluster`` fixture in tests/bridgekit.py) and by the
chaos run (tests/chaos.py). Each node is a ``nats-server`` process with its own config file,
store directory and log; the nodes know each other by cluster routes. A node can be SIGKILLed
and started again on the same ports and store.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from tests.conftest import free_port


@dataclass
class NatsNode:
    """One ``nats-server`` of the cluster."""

    name: str
    port: int
    cluster_port: int
    monitor_port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None


def nats_binary() -> str:
    """The nats-server executable.

    Raises:
        FileNotFoundError: it is not installed (``make setup`` installs Debian's package).
    """
    binary = shutil.which("nats-server") or "/usr/bin/nats-server"
    if not Path(binary).exists():
        raise FileNotFoundError("nats-server is not installed: run 'make setup' (apt nats-server)")
    return binary


@dataclass
class NatsCluster:
    """``size`` JetStream nodes in one cluster, started by ``start`` and ended by ``stop``."""

    folder: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [
                NatsNode(
                    f"n{i + 1}", free_port(), free_port(), free_port(), self.folder / f"n{i + 1}"
                )
                for i in range(self.size)
            ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [n.url for n in self.nodes]

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(
            f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node
        )
        node.folder.mkdir(parents=True, exist_ok=True)
        path = node.folder / "nats.conf"
        path.write_text(
            f"""server_name: {node.name}
listen: 127.0.0.1:{node.port}
http: 127.0.0.1:{node.monitor_port}
jetstream {{ store_dir: "{node.folder / "js"}" }}
cluster {{
  name: canvoy
  listen: 127.0.0.1:{node.cluster_port}
  routes: [{routes}]
}}
"""
        )
        return path

    def start_node(self, node: NatsNode) -> None:
        """Start (or start again) ``node`` on its ports and store."""
        config = self._config(node)
        with (node.folder / "nats.log").open("ab") as out:
            node.proc = subprocess.Popen(
                [nats_binary(), "-c", str(config)], stdout=subprocess.DEVNULL, stderr=out
            )

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every node and wait until JetStream is ready on each.

        Raises:
            TimeoutError: the cluster did not become ready in time (see the nodes' nats.log).
        """
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until every running node answers its health check with JetStream current.

        Raises:
            TimeoutError: a node is not healthy after ``timeout_s`` (see its nats.log).
        """
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while node.running and not healthy(node):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"NATS node {node.name} not ready: see {node.folder}")
                time.sleep(0.1)

    def kill(self, node: NatsNode) -> None:
        """SIGKILL ``node`` and reap it."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def stop(self) -> None:
        """End every node (SIGTERM, then SIGKILL after 10 s)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.kill(node)


def healthy(node: NatsNode) -> bool:
    """True when ``node``'s monitoring port says it is healthy (JetStream included)."""
    url = f"http://127.0.0.1:{node.monitor_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(json.loads(answer.read()).get("status") == "ok")
    except (OSError, ValueError):
        return False


def listening(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a stream, as a reader sees it."""

    seq: int
    msg_id: str | None
    stored: datetime
    record: dict[str, Any]


def read_stream(urls: list[str], stream: str, timeout_s: float = 60.0) -> list[StoredMessage]:
    """Every message of ``stream`` in order, through an ephemeral pull consumer.

    Raises:
        TimeoutError: the stream could not be read completely within ``timeout_s``.
        nats.errors.Error: the cluster did not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:  # a cluster that just lost a node answers once it has elected new leaders
            return asyncio.run(_read(urls, stream, deadline))
        except NatsError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def _read(urls: list[str], stream: str, deadline: float) -> list[StoredMessage]:
    nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info(stream)
        expected = info.state.messages
        sub = await js.pull_subscribe(">", stream=stream)
        out: list[StoredMessage] = []
        while len(out) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} of {expected} messages of {stream}")
            try:
                batch = await sub.fetch(500, timeout=2)
            except NatsTimeoutError:
                continue
            for msg in batch:
                meta = msg.metadata
                headers = msg.headers or {}
                out.append(
                    StoredMessage(
                        seq=meta.sequence.stream,
                        msg_id=headers.get("Nats-Msg-Id"),
                        stored=meta.timestamp,
                        record=json.loads(msg.data),
                    )
                )
                await msg.ack()
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def stream_leader(urls: list[str], stream: str) -> str:
    """The name of the node that leads ``stream`` now."""

    async def ask() -> str:
        nc = await nats.connect(urls, connect_timeout=5, max_reconnect_attempts=5)
        try:
            info = await nc.jetstream(timeout=10).stream_info(stream)
            return str(info.cluster.leader if info.cluster else "")
        finally:
            await nc.close()

    return asyncio.run(ask())
