"""``type: mqtt``: decoded JSON republished to ``fleet/v1/<device>/<kind>`` for operators.

Every message fits the broker's packet limit: a telemetry record larger than ``max_payload_bytes``
is published as parts, cut by series (``records.split``); any other record that large, or a
part that still does not fit, is refused for good (a dead letter of this sink alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from canvoy.bridge.records import Record, split
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import (
    ConfigError,
    PublishRefusedError,
    RecordRefusedError,
    SinkError,
    TransportError,
)
from canvoy.transport.mqtt import PACKET_TOO_LARGE
from canvoy.wire.topics import Kind, fleet_topic

# Record kinds to the fleet topic they are republished on (tickets travel with the events).
FLEET_KINDS: dict[str, Kind] = {
    "telemetry": "telemetry",
    "events": "events",
    "status": "status",
    "tickets": "events",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSinkConfig:
    """How long to wait for the broker's acknowledgements, and the largest payload sent."""

    timeout_s: float = 10.0
    max_payload_bytes: int = 128 * 1024  # AWS IoT Core's limit; Mosquitto's is canvoy's too

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s: {self.timeout_s} must be > 0")
        if not 1024 <= self.max_payload_bytes <= 256 * 1024 * 1024:
            raise ConfigError("max_payload_bytes must be 1024..268435456")


class MqttSink:
    """QoS 1 publishes over the bridge's own connection; done when every PUBACK arrived."""

    def __init__(self, name: str, config: MqttSinkConfig, context: SinkContext) -> None:
        self.name = name
        self.config = config
        self._publish = context.publish

    def deliver(self, records: Sequence[Record]) -> None:
        """Publish every record and wait for the acknowledgements.

        Raises:
            RecordRefusedError: a record cannot fit the broker's packet limit.
            SinkError: a publish was refused or the connection dropped.
        """
        limit = self.config.max_payload_bytes
        sent: list[tuple[Record, Future[None]]] = []
        too_large: list[str] = []
        for r in records:
            for part in split(r, limit):
                if len(part.text) > limit:
                    too_large.append(r.key)
                    break
                topic = fleet_topic(r.device, FLEET_KINDS[r.kind])
                sent.append((r, self._publish(topic, part.json().encode())))
        refused = list(too_large)
        try:
            for record, fut in sent:
                try:
                    fut.result(self.config.timeout_s)
                except PublishRefusedError as exc:
                    if exc.reason_code != PACKET_TOO_LARGE:
                        raise
                    refused.append(record.key)
        except (TransportError, FutureTimeout) as exc:
            raise SinkError(f"sink {self.name}: fleet republish failed: {exc}") from exc
        if refused:
            raise RecordRefusedError(
                f"larger than the fleet topic's {limit}-byte limit even when split",
                tuple(dict.fromkeys(refused)),
            )

    def close(self) -> None:
        """Nothing to close: the connection is the bridge's."""


@register("mqtt")
def _make(name: str, options: Mapping[str, Any], context: SinkContext) -> MqttSink:
    return MqttSink(name, build(MqttSinkConfig, options, f"sinks.{name}"), context)
