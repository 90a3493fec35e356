"""What every sink is, and the registry that builds sinks from ``bridge.yaml`` entries."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from canvoy.bridge.records import Record
from canvoy.errors import ConfigError


class Sink(Protocol):
    """A destination. ``deliver`` returns only when every record is durably accepted."""

    name: str

    def deliver(self, records: Sequence[Record]) -> None:
        """Hand over ``records``; idempotent by ``Record.key``.

        Raises:
            RecordRefusedError: a record can never be taken (it becomes a dead letter at once).
            SinkError: not accepted now (the sink's own queue retries it with back-off).
        """

    def close(self) -> None:
        """Release connections and files."""


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What sinks may use of the bridge: its MQTT connection, for the fleet republish."""

    publish: Callable[[str, bytes], Future[None]]


Factory = Callable[[str, Mapping[str, Any], SinkContext], Sink]
_REGISTRY: dict[str, Factory] = {}
# Each type is a module of this package; its libraries (httpx, nats-py) come with canvoy[bridge].
SINK_TYPES = ("jsonl", "mqtt", "nats", "webhook")


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
    kind = options.get("type")
    if not isinstance(kind, str) or kind not in SINK_TYPES:
        known = ", ".join(SINK_TYPES)
        raise ConfigError(f"sinks.{name}.type: {kind!r} is not a sink type (known: {known})")
    try:
        importlib.import_module(f"canvoy.bridge.sinks.{kind}")  # it registers itself
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"sinks.{name}: a {kind} sink needs the Python package {exc.name!r}: "
            "pip install 'canvoy[bridge]'"
        ) from exc
    rest = {k: v for k, v in options.items() if k != "type"}
    return _REGISTRY[kind](name, rest, context)
