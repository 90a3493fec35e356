"""``type: mqtt``: decoded JSON republished to ``fleet/v1/<device>/<kind>`` for operators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import SinkError, TransportError
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
    """How long to wait for the broker's acknowledgements."""

    timeout_s: float = 10.0


class MqttSink:
    """QoS 1 publishes over the bridge's own connection; done when every PUBACK arrived."""

    def __init__(self, name: str, config: MqttSinkConfig, context: SinkContext) -> None:
        self.name = name
        self.config = config
        self._publish = context.publish

    def deliver(self, records: Sequence[Record]) -> None:
        """Publish every record and wait for the acknowledgements.

        Raises:
            SinkError: a publish was refused or the connection dropped.
        """
        futures = [
            self._publish(fleet_topic(r.device, FLEET_KINDS[r.kind]), r.json().encode())
            for r in records
        ]
        try:
            for fut in futures:
                fut.result(self.config.timeout_s)
        except (TransportError, FutureTimeout) as exc:
            raise SinkError(f"sink {self.name}: fleet republish failed: {exc}") from exc

    def close(self) -> None:
        """Nothing to close: the connection is the bridge's."""


@register("mqtt")
def _make(name: str, options: Mapping[str, Any], context: SinkContext) -> MqttSink:
    return MqttSink(name, build(MqttSinkConfig, options, f"sinks.{name}"), context)
