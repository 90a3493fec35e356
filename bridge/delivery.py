"""One queue per sink: a thread that hands a sink its spooled records in order, so that a sink
that is down holds back only its own records and a record a sink can never take is set aside.

A sink that fails with ``SinkError`` is retried with back-off and jitter, its records kept in
the spool; one that raises ``RecordRefusedError`` gets its refused records moved to the dead
letters at once (a refused batch is retried record by record to find which), and so does a bug
in the sink's own code on one record (reason ``internal``). The thread never dies of a record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import Sink
from canvoy.bridge.state import Spooled, SpoolReader
from canvoy.errors import RecordRefusedError, SinkError, StoreError
from canvoy.transport.backoff import StoppedError, retry_until_stopped

log = logging.getLogger(__name__)
T = TypeVar("T")
BATCH = 200  # records handed to a sink at once, and no more JSON than:
BATCH_BYTES = 4 * 1024 * 1024
RETRY_INITIAL_S = 1.0
RETRY_MAX_S = 30.0
IDLE_WAIT_S = 1.0


def retry(
    attempt: Callable[[], T],
    retry_on: type[Exception],
    stop: threading.Event,
    note: Callable[[BaseException | None, float], None],
) -> T:
    """``attempt`` until it works or ``stop`` is set, with the bridge's back-off (1 s, doubling
    to 30 s, plus jitter): for the sink queues, the state file and the broker connection.

    Raises:
        StoppedError: ``stop`` was set first.
    """
    return retry_until_stopped(
        attempt,
        retry_on=retry_on,
        stop=stop,
        initial_s=RETRY_INITIAL_S,
        max_s=RETRY_MAX_S,
        jitter_s=0.5,
        on_retry=note,
    )


class SinkQueue:
    """The thread that feeds one sink from the spool."""

    def __init__(
        self,
        sink: Sink,
        state: Path,
        stop: threading.Event,
        stats: Counter[str],
        on_settled: Callable[[list[str]], None],
    ) -> None:
        self.sink = sink
        self._state = state
        self._stop = stop
        self._stats = stats
        self._on_settled = on_settled
        self._wake = threading.Event()
        self.latency_s = 0.0  # of the last delivery
        self.deliveries = 0  # accepted deliveries, and their seconds in all (a summary)
        self.latency_sum_s = 0.0
        self.down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def start(self) -> None:
        """Start feeding the sink."""
        self._thread.start()

    def notify(self) -> None:
        """New records are in the spool."""
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        """Wait for the thread after ``stop`` was set."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            reader = SpoolReader(self._state, self.sink.name)
        except StoreError as exc:
            log.error("sink %s cannot start: %s", self.sink.name, exc)
            return
        try:
            while not self._stop.is_set():
                try:
                    rows = reader.take(BATCH, BATCH_BYTES)
                except StoreError as exc:  # the disk is sick: wait, the rows stay spooled
                    self._state_failed(exc, RETRY_MAX_S)
                    if self._stop.wait(RETRY_MAX_S):
                        raise StoppedError from exc
                    continue
                if not rows:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                self._settle(reader, rows)
        except StoppedError:
            pass
        except Exception:  # a bug here must not end this sink's deliveries silently
            log.exception("sink %s: its queue stopped", self.sink.name)
            self._stats[f"sink_queue_crashes_{self.sink.name}"] += 1
        finally:
            reader.close()

    def _state_failed(self, error: BaseException | None, wait_s: float) -> None:
        """The state file refused a read or a write: counted and logged, then retried."""
        self._stats[f"sink_state_failures_{self.sink.name}"] += 1
        log.error("sink %s: %s; retrying in %.1f s", self.sink.name, error, wait_s)

    def _done(
        self, reader: SpoolReader, rows: list[Spooled], reason: str | None = None
    ) -> list[str]:
        """Record the settlement, retrying while the disk refuses (a full disk heals): the
        sink already has these records, so they must not be handed over again."""
        done = partial(reader.done, rows, reason=reason)
        return retry(done, StoreError, self._stop, self._state_failed)

    def _settle(self, reader: SpoolReader, rows: list[Spooled]) -> None:
        refused = self._deliver(rows)
        taken = [r for r in rows if r.key not in refused]
        settled = self._done(reader, taken) if taken else []
        for reason in sorted(set(refused.values())):
            dead = [r for r in rows if refused.get(r.key) == reason]
            settled += self._done(reader, dead, reason)
            self._stats[f"dead_lettered_{self.sink.name}"] += len(dead)
            log.error(
                "sink %s: %d record(s) set aside as dead letters (%s), e.g. %s",
                self.sink.name,
                len(dead),
                reason,
                dead[0].key,
            )
        self._stats[f"forwarded_{self.sink.name}"] += len(taken)
        if settled:
            self._on_settled(settled)

    def _deliver(self, rows: Sequence[Spooled]) -> dict[str, str]:
        """Deliver ``rows``, retrying while the sink is down; return the refused keys' reasons."""
        records = [Record.from_text(r.key, r.device, r.kind, r.text) for r in rows]
        outcome = self._attempt_until_taken(records)
        if outcome is None:
            return {}
        if outcome.keys:
            return dict.fromkeys(outcome.keys, str(outcome))
        if len(records) == 1:
            return {records[0].key: str(outcome)}
        refused: dict[str, str] = {}
        for record in records:  # which of them? one at a time
            single = self._attempt_until_taken([record])
            if single is not None:
                refused[record.key] = str(single)
        return refused

    def _attempt_until_taken(self, records: list[Record]) -> RecordRefusedError | None:
        def attempt() -> RecordRefusedError | None:
            started = time.monotonic()
            try:
                self.sink.deliver(records)
            except RecordRefusedError as exc:
                return exc
            except SinkError:
                raise
            except Exception as exc:  # the sink's own bug, on these records
                log.exception("sink %s failed on %s", self.sink.name, records[0].key)
                self._stats[f"sink_internal_{self.sink.name}"] += 1
                return RecordRefusedError(f"internal: {type(exc).__name__}: {exc}")
            self.latency_s = time.monotonic() - started
            self.latency_sum_s += self.latency_s
            self.deliveries += 1
            if self.down_since is not None:
                log.info(
                    "sink %s: delivering again after %.0f s",
                    self.sink.name,
                    time.monotonic() - self.down_since,
                )
                self.down_since = None
            return None

        def note(error: BaseException | None, wait_s: float) -> None:
            if self.down_since is None:
                self.down_since = time.monotonic()
            self._stats[f"sink_retries_{self.sink.name}"] += 1
            log.error(
                "sink %s: %s; its %d record(s) wait, next try in %.1f s",
                self.sink.name,
                error,
                len(records),
                wait_s,
            )

        return retry(attempt, SinkError, self._stop, note)
