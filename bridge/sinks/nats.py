"""``type: nats``: records published to a NATS JetStream stream, de-duplicated by Nats-Msg-Id.

Subjects are ``<prefix>.<kind>.<device>``. The stream is created when missing, with a
duplicate window so that a redelivered record (same ``Nats-Msg-Id``) is stored once.
nats-py is asyncio; the sink runs one event loop in its own thread and waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Mapping, Sequence
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


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """The server, the stream and its subjects."""

    url: str = "nats://127.0.0.1:4222"
    stream: str = "CANVOY"
    subject_prefix: str = "canvoy"
    duplicate_window_s: float = 86400.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for url in self.url.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ConfigError(f"url: {url!r} must start with nats:// (or tls://)")
        if self.timeout_s <= 0 or self.duplicate_window_s <= 0:
            raise ConfigError("timeout_s and duplicate_window_s must be > 0")


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

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(self.config.timeout_s * 3)

    async def _connect(self) -> None:
        c = self.config
        self._nc = await nats.connect(
            c.url,
            connect_timeout=c.timeout_s,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
        )
        self._js = self._nc.jetstream(timeout=c.timeout_s)
        try:
            await self._js.stream_info(c.stream)
        except NotFoundError:
            await self._js.add_stream(
                StreamConfig(
                    name=c.stream,
                    subjects=[f"{c.subject_prefix}.>"],
                    duplicate_window=c.duplicate_window_s,
                )
            )

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
            SinkError: the server cannot be reached or did not acknowledge.
        """
        try:
            if self._js is None:
                self._run(self._connect())
            self.duplicates += self._run(self._publish(records))
        except (NatsError, OSError, TimeoutError) as exc:
            raise SinkError(f"sink {self.name}: NATS {self.config.url}: {exc!r}") from exc

    def close(self) -> None:
        """Drain the connection and stop the loop."""
        if self._nc is not None:
            with contextlib.suppress(Exception):  # closing is best effort
                self._run(self._nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@register("nats")
def _make(name: str, options: Mapping[str, Any], _context: SinkContext) -> NatsSink:
    return NatsSink(name, build(NatsConfig, options, f"sinks.{name}"))
