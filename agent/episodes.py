"""One episode tracker for every diagnostic source: a fault opens an episode, changes it, closes it.

A source (DBC DTC signals, lamps, OBD-II, J1939 DM1, triggers) reports, for one *scope* (a DBC
message, a lamp signal, an OBD-II ECU, a DM1 sender, a trigger), which faults are active now:
``key -> Fault``. The tracker compares that with the episodes it has open in the scope and
gives the transitions: ``set`` (a new episode, with a new id), ``update`` (the fault's code or
detail changed: FMI, occurrence count, OBD-II status) and ``clear``. The source turns each
transition into its typed event; the events and the episode changes are sealed together, so
the outbox stores an episode in the same transaction as the envelope that opens or closes it.

After a restart the open episodes come back from the outbox. The first report of their scope
decides: a fault still active continues its episode (no new ``set``), one gone is cleared. An
episode whose scope says nothing within ``resume_s`` (its bus, ECU or trigger is gone) is
cleared by the tracker itself, with a note saying so.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from canvoy.wire.events import DtcEvent, EpisodeEvent, EpisodeState, Event, TriggerEvent

log = logging.getLogger(__name__)

RESTORED_NOTE = "not reported again after the agent restarted"


@dataclass(frozen=True, slots=True)
class Fault:
    """One active fault as its source reports it: the code now, and what an update compares."""

    code: str
    detail: tuple[Any, ...] = ()  # JSON scalars: (fmi, occurrences), OBD-II statuses, ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Episode:
    """One open episode, as the outbox stores it."""

    id: str
    source: str  # dbc, lamp, obd, j1939, trigger
    scope: str
    key: str
    code: str
    detail: tuple[Any, ...] = ()
    opened_ms: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """What one event does to the stored episodes; sealed with the event's envelope."""

    state: EpisodeState
    episode: Episode


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of an episode, for its source to turn into an event."""

    state: EpisodeState
    episode: Episode


Emit = Callable[[Sequence[Event], Sequence[Change]], object]
Build = Callable[[Transition], EpisodeEvent]


@dataclass(slots=True)
class _Open:
    episode: Episode
    confirmed: bool  # False for an episode restored from the outbox until its scope reports


class EpisodeTracker:
    """Open episodes of every source, by scope and key. Thread-safe.

    ``emit(events, changes)`` seals the events with the episode changes (``Batcher.add_events``).
    It is called under the tracker's lock, so events of one episode are sealed in order.
    """

    def __init__(
        self,
        emit: Emit,
        restored: Iterable[Episode] = (),
        *,
        resume_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: secrets.token_hex(8),
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._new_id = new_id
        self._lock = threading.Lock()
        self._open: dict[str, dict[str, _Open]] = {}
        for episode in restored:
            self._open.setdefault(episode.scope, {})[episode.key] = _Open(episode, False)
        self._resume_until: float | None = clock() + resume_s
        self.resumed = sum(len(v) for v in self._open.values())
        self.opened = self.updated = self.closed = 0

    @property
    def open_count(self) -> int:
        """Episodes open now."""
        with self._lock:
            return sum(len(v) for v in self._open.values())

    def open_keys(self, scope: str) -> set[str]:
        """Keys with an open episode in ``scope`` (restored ones included)."""
        with self._lock:
            return set(self._open.get(scope, {}))

    def report(
        self, source: str, scope: str, active: Mapping[str, Fault], build: Build, t_ms: int
    ) -> int:
        """The faults active in ``scope`` now; emit the transitions. Returns how many."""
        with self._lock:
            now = self._open.setdefault(scope, {})
            steps: list[Transition] = []
            for key, fault in active.items():
                held = now.get(key)
                if held is None:
                    episode = Episode(
                        id=self._new_id(),
                        source=source,
                        scope=scope,
                        key=key,
                        code=fault.code,
                        detail=fault.detail,
                        opened_ms=t_ms,
                    )
                    now[key] = _Open(episode, True)
                    steps.append(Transition("set", episode))
                    continue
                held.confirmed = True
                if (fault.code, fault.detail) != (held.episode.code, held.episode.detail):
                    held.episode = replace(held.episode, code=fault.code, detail=fault.detail)
                    steps.append(Transition("update", held.episode))
            for key in [k for k in now if k not in active]:
                steps.append(Transition("clear", now.pop(key).episode))
            self._send(steps, build)
            return len(steps)

    def touch(self, scope: str, key: str, build: Build) -> bool:
        """Emit an ``update`` of an open episode (a freeze frame completed); False if none."""
        with self._lock:
            held = self._open.get(scope, {}).get(key)
            if held is None:
                return False
            self._send([Transition("update", held.episode)], build)
            return True

    def tick(self, t_ms: int) -> int:
        """Clear restored episodes whose scope has not reported within ``resume_s``."""
        if self._resume_until is None or self._clock() < self._resume_until:
            return 0
        with self._lock:
            self._resume_until = None
            stale = [
                (scope, key, held.episode)
                for scope, held_by_key in self._open.items()
                for key, held in held_by_key.items()
                if not held.confirmed
            ]
            for scope, key, _episode in stale:
                del self._open[scope][key]
            steps = [Transition("clear", episode) for _s, _k, episode in stale]
            self._send(steps, lambda step: restored_clear(step.episode, t_ms))
            return len(steps)

    def _send(self, steps: list[Transition], build: Build) -> None:
        if not steps:
            return
        events = [build(step) for step in steps]
        for step in steps:
            if step.state == "set":
                self.opened += 1
            elif step.state == "update":
                self.updated += 1
            else:
                self.closed += 1
            log.info(
                "episode %s %s: %s at %s",
                step.episode.id,
                step.state,
                step.episode.code,
                step.episode.scope,
            )
        self._emit(events, [Change(step.state, step.episode) for step in steps])


def restored_clear(episode: Episode, t_ms: int) -> EpisodeEvent:
    """The clear the tracker sends for a restored episode nobody reported again."""
    if episode.source == "trigger":
        return TriggerEvent(
            t_ms=t_ms,
            name=episode.key,
            state="clear",
            condition="",
            episode=episode.id,
            note=RESTORED_NOTE,
        )
    return DtcEvent(
        t_ms=t_ms,
        code=episode.code,
        state="clear",
        source=episode.source,  # type: ignore[arg-type]
        signal=episode.scope,
        episode=episode.id,
        note=RESTORED_NOTE,
    )
