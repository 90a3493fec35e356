"""Group samples into telemetry batches closed by time, count or size; events go straight out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from canvoy.agent.collect import Sample
from canvoy.agent.episodes import Change
from canvoy.errors import ConfigError
from canvoy.wire import body
from canvoy.wire.envelope import MAX_PAYLOAD_BYTES, Encoding
from canvoy.wire.events import Event, events_content
from canvoy.wire.topics import Kind

log = logging.getLogger(__name__)

# What the envelope adds around a body: fields, signature and msgpack headers.
ENVELOPE_OVERHEAD_BYTES = 256
MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES - ENVELOPE_OVERHEAD_BYTES
_NEW_SERIES_BYTES = 12  # array headers of a new column, beyond its key
_SAMPLE_BYTES = 11  # a float64 value and a short delta; ints and repeats are smaller


class Seal(Protocol):
    """Signs and stores one body (``Outbox.seal``): ``seq`` is None for the next number, or one
    reserved before; events bring their episode changes, stored with the envelope."""

    def __call__(
        self,
        kind: Kind,
        encoding: Encoding,
        data: bytes,
        seq: int | None = None,
        episodes: Sequence[Change] = (),
    ) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchConfig:
    """When an open telemetry batch is closed: whichever limit is reached first."""

    max_interval_s: float = 1.0
    max_samples: int = 20_000
    max_bytes: int = 96 * 1024  # uncompressed estimate; the signed payload stays <= 128 KiB
    queue_samples: int = 200_000  # samples waiting for the sealing thread; beyond: dropped
    queue_events: int = 10_000  # event envelopes waiting for the sealing thread

    def __post_init__(self) -> None:
        if self.queue_samples < 1000:
            raise ConfigError(f"must be >= 1000, got {self.queue_samples}", key="queue_samples")
        if self.queue_events < 10:
            raise ConfigError(f"must be >= 10, got {self.queue_events}", key="queue_events")
        if not 0.01 <= self.max_interval_s <= 3600:
            raise ConfigError(f"max_interval_s {self.max_interval_s} must be 0.01..3600")
        if not 1 <= self.max_samples <= body.MAX_SAMPLES:
            raise ConfigError(
                f"max_samples {self.max_samples} must be 1..{body.MAX_SAMPLES} "
                "(the protocol's bound)"
            )
        if not 1024 <= self.max_bytes <= MAX_BATCH_BYTES:
            raise ConfigError(
                f"max_bytes {self.max_bytes} must be 1024..{MAX_BATCH_BYTES} "
                "(the signed envelope must fit AWS IoT Core's 128 KiB)"
            )


@dataclass(slots=True)
class BatchStats:
    """What the batcher has done so far."""

    samples: int = 0
    batches: int = 0
    events: int = 0
    split: int = 0  # batches that compressed too poorly and were cut in two


class Batcher:
    """Collects samples column by column and hands each closed batch to ``seal``.

    Not thread-safe: it is owned by the sealing thread (agent/sealer.py), which calls ``add``,
    ``add_events``, ``tick`` and ``flush``. ``seal`` gets the kind, encoding and body of each
    batch (the outbox signs and stores it).
    """

    def __init__(
        self,
        config: BatchConfig,
        seal: Seal,
        policy_hash: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = BatchStats()
        self._seal = seal
        self._policy = policy_hash
        self._clock = clock
        self._series: dict[str, tuple[list[int], list[body.Scalar]]] = {}
        self._count = 0
        self._bytes = 0
        self._opened = 0.0

    def add(self, sample: Sample) -> None:
        """Append one sample; closes the batch when it is full."""
        t, key, value = sample
        column = self._series.get(key)
        if column is None:
            if not self._series:
                self._opened = self._clock()
            column = self._series[key] = ([], [])
            self._bytes += len(key) + _NEW_SERIES_BYTES
        column[0].append(int(t * 1000))
        column[1].append(value)
        self._count += 1
        self._bytes += _SAMPLE_BYTES
        if self._count >= self.config.max_samples or self._bytes >= self.config.max_bytes:
            self._close()

    def add_events(
        self, events: Sequence[Event], episodes: Sequence[Change] = (), seq: int | None = None
    ) -> int | None:
        """Seal events at once, in their own envelope: they never wait behind telemetry.

        ``episodes`` are the episode changes the events make, stored with the envelope; ``seq``
        is a sequence number reserved for them. Returns the envelope's sequence number (None
        if it could not be stored).
        """
        encoding, data = body.encode(events_content(events))
        sealed = self._seal("events", encoding, data, seq, episodes)
        self.stats.events += len(events)
        return sealed if isinstance(sealed, int) else None

    def tick(self) -> None:
        """Close the open batch if it is older than ``max_interval_s``."""
        if self._series and self._clock() - self._opened >= self.config.max_interval_s:
            self._close()

    def flush(self) -> None:
        """Close the open batch now (shutdown)."""
        if self._series:
            self._close()

    def _close(self) -> None:
        series, self._series = self._series, {}
        self.stats.samples += self._count
        self._count = self._bytes = 0
        self._emit(series)

    def _emit(self, series: dict[str, tuple[list[int], list[body.Scalar]]]) -> None:
        encoding, data = body.encode(body.telemetry_content(self._policy, series))
        if len(data) > MAX_BATCH_BYTES and (
            len(series) > 1 or len(next(iter(series.values()))[0]) > 1
        ):
            self.stats.split += 1
            for half in _halves(series):
                self._emit(half)
            return
        self._seal("telemetry", encoding, data, None)
        self.stats.batches += 1


def _halves(
    series: dict[str, tuple[list[int], list[body.Scalar]]],
) -> tuple[dict[str, tuple[list[int], list[body.Scalar]]], ...]:
    """Cut a batch in two: by signals when there are several, else one signal's samples."""
    keys = list(series)
    if len(keys) > 1:
        mid = len(keys) // 2
        return {k: series[k] for k in keys[:mid]}, {k: series[k] for k in keys[mid:]}
    key = keys[0]
    times, values = series[key]
    mid = len(times) // 2
    return {key: (times[:mid], values[:mid])}, {key: (times[mid:], values[mid:])}
