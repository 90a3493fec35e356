"""What every sink is, and the registry that builds sinks from ``bridge.yaml`` entries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.records import Record
from wire.errors import ConfigError


class Sink(Protocol):
    """A destination. ``deliver`` returns only when every record is durably accepted."""

    name: str

    def deliver(self, records: Sequence[Record]) -> None:
        """Hand over ``records``; idempotent by ``Record.key``.

        Raises:
            SinkError: not accepted (the bridge retries with back-off and does not acknowledge).
        """

    def close(self) -> None:
        """Release connections and files."""


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What sinks may use of the bridge: its MQTT connection, for the fleet republish."""

    publish: Callable[[str, bytes], Future[None]]


Factory = Callable[[str, Mapping[str, Any], SinkContext], Sink]
_REGISTRY: dict[str, Factory] = {}


def register(kind: str) -> Callable[[Factory], Factory]:
    """Register a sink factory under ``type: kind``."""

    def add(factory: Factory) -> Factory:
        _REGISTRY[kind] = factory
        return factory

    return add


def build_sink(name: str, options: Mapping[str, Any], context: SinkContext) -> Sink:
    """Build the sink ``name`` from its ``bridge.yaml`` entry.

    Raises:
        ConfigError: no or an unknown ``type``, or a bad option (named by its path).
    """
    from bridge.sinks import jsonl, mqtt, nats, webhook  # noqa: F401 - they register themselves

    kind = options.get("type")
    if kind not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"sinks.{name}.type: {kind!r} is not a sink type (known: {known})")
    rest = {k: v for k, v in options.items() if k != "type"}
    return _REGISTRY[kind](name, rest, context)
