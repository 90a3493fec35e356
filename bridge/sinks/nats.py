"""``type: nats``: records published to a NATS JetStream stream, de-duplicated by Nats-Msg-Id.

Subjects are ``<prefix>.<kind>.<device>``. The stream is created when missing, with a
duplicate window so that a redelivered record (same ``Nats-Msg-Id``) is stored once, and with
``replicas`` copies on a cluster. ``url`` names one server or several (a list, or commas): the
client connects to any of them and reconnects to another when one goes away. A record counts as
delivered only on the stream's publish acknowledgement, which a replicated stream sends once a
majority of its replicas stored it; anything else is a SinkError, and the sink's queue sends
the record again under the same Nats-Msg-Id.
nats-py is asyncio; the sink runs one event loop in its own thread and waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.errors import Error as NatsError
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import ConfigError, SinkError

T = TypeVar("T")
SCHEMES = ("nats://", "tls://", "ws://", "wss://")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """The servers, the stream and its subjects."""

    url: str | tuple[str, ...] = "nats://127.0.0.1:4222"
    stream: str = "CANVOY"
    subject_prefix: str = "canvoy"
    replicas: int = 1
    duplicate_window_s: float = 86400.0
    timeout_s: float = 10.0
    reconnect_wait_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigError("url: give at least one server, e.g. nats://127.0.0.1:4222")
        for url in self.servers:
            if not url.startswith(SCHEMES):
                raise ConfigError(f"url: {url!r} must start with nats:// (or tls://)")
        if self.timeout_s <= 0 or self.duplicate_window_s <= 0 or self.reconnect_wait_s <= 0:
            raise ConfigError("timeout_s, duplicate_window_s and reconnect_wait_s must be > 0")
        if not 1 <= self.replicas <= 5:
            raise ConfigError(f"replicas: {self.replicas} must be 1..5 (JetStream's limit)")

    @property
    def servers(self) -> list[str]:
        """Every server URL, from a list or a comma-separated string."""
        urls = self.url.split(",") if isinstance(self.url, str) else list(self.url)
        return [u.strip() for u in urls if u.strip()]


class NatsSink:
    """Publishes and waits for each PubAck; a duplicate PubAck is a success."""

    def __init__(self, name: str, config: NatsConfig) -> None:
        self.name = name
        self.config = config
        self.duplicates = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"nats-{name}", daemon=True
        )
        self._thread.start()
        self._nc: Any = None
        self._js: Any = None
        # One connection attempt at a time: with every server down it goes on trying (nats-py
        # never gives up), and a later delivery waits on the same attempt.
        self._connecting: Future[None] | None = None

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.config.timeout_s * 3)

    def _ensure_connected(self) -> None:
        if self._js is not None:
            return
        if self._connecting is None or (
            self._connecting.done() and self._connecting.exception() is not None
        ):
            self._connecting = asyncio.run_coroutine_threadsafe(self._connect(), self._loop)
        self._connecting.result(self.config.timeout_s * 3)

    async def _connect(self) -> None:
        c = self.config
        if self._nc is None:
            self._nc = await nats.connect(
                c.servers,
                connect_timeout=c.timeout_s,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                reconnect_time_wait=c.reconnect_wait_s,
                dont_randomize=False,
            )
        js = self._nc.jetstream(timeout=c.timeout_s)
        try:
            await js.stream_info(c.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=c.stream,
                    subjects=[f"{c.subject_prefix}.>"],
                    duplicate_window=c.duplicate_window_s,
                    num_replicas=c.replicas,
                )
            )
        self._js = js  # only once the stream exists: publishing needs it

    async def _publish(self, records: Sequence[Record]) -> int:
        duplicates = 0
        for r in records:
            ack = await self._js.publish(
                f"{self.config.subject_prefix}.{r.kind}.{r.device}",
                r.json().encode(),
                headers={"Nats-Msg-Id": r.key},
            )
            duplicates += bool(ack.duplicate)
        return duplicates

    def deliver(self, records: Sequence[Record]) -> None:
        """Publish to JetStream and wait for the stream's acknowledgements.

        Raises:
            SinkError: no server can be reached, or the stream did not acknowledge in time
                (a cluster electing a new leader after losing a node).
        """
        try:
            self._ensure_connected()
            self.duplicates += self._run(self._publish(records))
        except (NatsError, OSError, TimeoutError) as exc:
            servers = ",".join(self.config.servers)
            raise SinkError(f"sink {self.name}: NATS {servers}: {exc!r}") from exc

    def close(self) -> None:
        """Drain the connection and stop the loop."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                self._run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@register("nats")
def _make(name: str, options: Mapping[str, Any], _context: SinkContext) -> NatsSink:
    return NatsSink(name, build(NatsConfig, options, f"sinks.{name}"))
