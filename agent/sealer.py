"""The sealing thread: samples and events from the bus threads, through bounded queues, into
batches that are compressed, signed and committed to the outbox.

Bus threads only append to a queue (``offer``, ``add_events``) and never wait for the disk, a
signature or a lock the disk holds. When a queue is full, what does not fit is dropped and
counted. One thread, ``sealer``, owns the :class:`Batcher` and is the only one that seals.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from canvoy.agent.batch import Batcher
from canvoy.agent.collect import Sample
from canvoy.agent.episodes import Change
from canvoy.agent.faults import FaultLog
from canvoy.wire.events import Event

log = logging.getLogger(__name__)

TICK_S = 0.05
Events = Sequence[Event]


@dataclass(slots=True)
class SealerStats:
    """What the queues in front of the sealing thread let through and dropped."""

    queued_samples: int = 0
    queued_events: int = 0
    peak_samples: int = 0
    dropped_samples: int = 0
    dropped_events: int = 0
    errors: int = 0


class Sealer:
    """Bounded queues from any thread to the one thread that batches and seals.

    ``reserve`` gives an events envelope its sequence number at once, so that a watcher can
    name it later (``opened_seq``) although the envelope is sealed a few milliseconds after.
    """

    def __init__(
        self,
        batcher: Batcher,
        reserve: Callable[[], int],
        *,
        max_samples: int,
        max_events: int,
        tick_s: float = TICK_S,
    ) -> None:
        self.batcher = batcher
        self._reserve = reserve
        self._max_samples = max_samples
        self._max_events = max_events
        self._tick_s = tick_s
        # deque.append and popleft are atomic: the bus threads take no lock to hand a sample on.
        self._samples: deque[Sample] = deque()
        self._events: deque[tuple[int, Events, list[Change]]] = deque()
        self._flushes: deque[threading.Event] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dropped_samples = FaultLog(log, "ingest queue full, samples dropped")
        self._dropped_events = FaultLog(
            log, "ingest queue full, events dropped", level=logging.ERROR
        )
        self._errors = FaultLog(log, "sealing failed", level=logging.ERROR)
        self._peak = 0
        self._thread = threading.Thread(target=self._run, name="sealer", daemon=True)

    # -- any thread ------------------------------------------------------------------------

    def offer(self, sample: Sample) -> None:
        """Queue one sample for the open batch; drop and count it when the queue is full."""
        queue = self._samples
        if len(queue) >= self._max_samples:
            self._dropped_samples.record(f"{self._max_samples} samples waiting")
            return
        queue.append(sample)

    def has_room(self) -> bool:
        """True while the sample queue is less than half full (log replays wait for this)."""
        return len(self._samples) < self._max_samples // 2

    def add_events(self, events: Events, episodes: Sequence[Change] = ()) -> int | None:
        """Queue events for their own envelope, with the episode changes they make (stored in
        the same transaction); return the envelope's sequence number (None: dropped)."""
        if len(self._events) >= self._max_events:
            self._dropped_events.record(f"{self._max_events} event envelopes waiting")
            return None
        seq = self._reserve()
        self._events.append((seq, list(events), list(episodes)))
        self._wake.set()
        return seq

    @property
    def stats(self) -> SealerStats:
        """Queue depths and drop counts now."""
        return SealerStats(
            queued_samples=len(self._samples),
            queued_events=len(self._events),
            peak_samples=self._peak,
            dropped_samples=self._dropped_samples.count,
            dropped_events=self._dropped_events.count,
            errors=self._errors.count,
        )

    def start(self) -> None:
        """Start the sealing thread."""
        self._thread.start()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Seal everything queued so far and the open batch; True once done."""
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Seal what is queued and the open batch, then end the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    # -- the sealing thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._drain()
            if stopping or self._flushes:
                self._guarded(self.batcher.flush)
                while self._flushes:
                    self._flushes.popleft().set()
                if stopping:
                    return
            self._guarded(self.batcher.tick)
            self._wake.wait(self._tick_s)
            self._wake.clear()

    def _drain(self) -> None:
        """Everything queued now: events first (they never wait behind telemetry)."""
        events, samples = self._events, self._samples
        while events:
            seq, batch, episodes = events.popleft()
            self._guarded(partial(self.batcher.add_events, batch, seq=seq, episodes=episodes))
        self._peak = max(self._peak, len(samples))
        add = self.batcher.add
        for _ in range(len(samples)):
            sample = samples.popleft()
            try:
                add(sample)
            except Exception as exc:  # the sealing loop goes on with the next sample
                self._errors.record(exc)

    def _guarded(self, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception as exc:  # the sealing loop survives anything one batch does
            self._errors.record(exc)
