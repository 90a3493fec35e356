"""Typed events of an ``events`` envelope: diagnostic codes, triggers and the agent's own notes.

Producers build these dataclasses and ``events_content`` turns them into the body's map; a
reader gets them back from ``parse_events``, which checks every field's type and bound. Fields
that are ``None`` are left out of the map. See docs/PROTOCOL.md, *Events* and *Episodes*.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from canvoy.wire.errors import MalformedError

EpisodeState = Literal["set", "update", "clear"]
DtcSource = Literal["dbc", "lamp", "obd", "j1939"]
FreezeFrame = dict[str, list[list[Any]]]  # signal -> [[t_ms, value], ...]

MAX_EVENTS = 1_000  # per envelope
MAX_TEXT = 256  # codes, names, signals, conditions, notes
MAX_FREEZE_SIGNALS = 64
MAX_FREEZE_SAMPLES = 10_000  # per signal
EPISODE_PATTERN = re.compile(r"[0-9a-f]{16}")
_STATES = get_args(EpisodeState)
_SOURCES = get_args(DtcSource)


@dataclass(frozen=True, slots=True, kw_only=True)
class DtcEvent:
    """A diagnostic trouble code of one episode: ``set``, then ``update``s, then ``clear``."""

    t_ms: int
    code: str  # P0217, or SPN110-FMI0 on J1939
    state: EpisodeState
    source: DtcSource
    signal: str  # where it came from: a DBC message, a lamp signal, an OBD-II ECU, a DM1 sender
    episode: str | None = None  # 16 hex digits; the same on every event of the episode
    odometer_km: float | None = None
    location: dict[str, float] | None = None  # {lat, lon}, only with the owner's consent
    freeze_frame: FreezeFrame | None = None
    dtc_status: list[str] | None = None  # OBD-II: of stored, pending, permanent
    spn: int | None = None  # J1939
    fmi: int | None = None
    occurrences: int | None = None
    lamps: dict[str, int] | None = None
    note: str | None = None  # why a clear came from the agent and not from the source
    opened_seq: int | None = None  # agents before episodes: the envelope that set the code

    type: Literal["dtc"] = "dtc"


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerEvent:
    """A trigger's episode: ``set``, an ``update`` with its freeze frame, then ``clear``."""

    t_ms: int
    name: str
    state: EpisodeState
    condition: str
    episode: str | None = None
    odometer_km: float | None = None
    location: dict[str, float] | None = None
    freeze_frame: FreezeFrame | None = None
    note: str | None = None
    opened_seq: int | None = None

    type: Literal["trigger"] = "trigger"

    @property
    def code(self) -> str:
        """Triggers are named by their name where DTCs are named by their code."""
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentEvent:
    """Something the agent itself reports (``what``: a short tag; ``detail``: one line)."""

    t_ms: int
    what: str
    detail: str = ""

    type: Literal["agent"] = "agent"


Event = DtcEvent | TriggerEvent | AgentEvent
EpisodeEvent = DtcEvent | TriggerEvent
_TYPES: dict[str, type[DtcEvent] | type[TriggerEvent] | type[AgentEvent]] = {
    "dtc": DtcEvent,
    "trigger": TriggerEvent,
    "agent": AgentEvent,
}


def to_map(event: Event) -> dict[str, Any]:
    """The event as the body's map (and as JSON downstream): ``None`` fields left out."""
    out: dict[str, Any] = {"type": event.type}
    for f in fields(event):
        value = getattr(event, f.name)
        if value is not None and f.name != "type":
            out[f.name] = value
    return out


def events_content(events: Sequence[Event]) -> dict[str, Any]:
    """The map for an events envelope."""
    return {"events": [to_map(e) for e in events]}


def parse_events(content: Mapping[str, Any]) -> list[Event]:
    """Check an events body and return its typed events.

    Raises:
        MalformedError: the list or an event is malformed (names the event and the field).
    """
    events = content.get("events")
    if not isinstance(events, list):
        raise MalformedError("body field 'events' is missing or of the wrong type")
    if len(events) > MAX_EVENTS:
        raise MalformedError(f"{len(events)} events in one envelope (at most {MAX_EVENTS})")
    return [parse_event(i, e) for i, e in enumerate(events)]


def parse_event(index: int, raw: Any) -> Event:
    """One event map to its dataclass; unknown keys are ignored (minor versions add fields).

    Raises:
        MalformedError: not a map, an unknown type, or a field of the wrong type or size.
    """
    if not isinstance(raw, dict):
        raise MalformedError(f"event {index} is not a map")
    kind = raw.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MalformedError(f"event {index} has unknown type {raw.get('type')!r}")
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name == "type" or f.name not in raw:
            continue
        check = _CHECKS[f.name]
        value = raw[f.name]
        if not check(value):
            raise MalformedError(f"event {index} ({cls.__name__}): field {f.name!r} is invalid")
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise MalformedError(f"event {index} ({cls.__name__}): {exc}") from exc


def _int(v: Any) -> bool:
    return type(v) is int and 0 <= v < 1 << 63


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def _number(v: Any) -> bool:
    return type(v) in (int, float)


def _location(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"lat", "lon"} and all(map(_number, v.values()))


def _sample(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and _int(v[0])
        and (type(v[1]) in (int, float, bool) or _text(v[1]))
    )


def _freeze(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= MAX_FREEZE_SIGNALS
        and all(
            _text(k)
            and isinstance(s, list)
            and len(s) <= MAX_FREEZE_SAMPLES
            and all(map(_sample, s))
            for k, s in v.items()
        )
    )


_CHECKS: dict[str, Any] = {
    "t_ms": _int,
    "code": _text,
    "name": _text,
    "state": lambda v: isinstance(v, str) and v in _STATES,
    "source": lambda v: isinstance(v, str) and v in _SOURCES,
    "signal": _text,
    "condition": _text,
    "episode": lambda v: isinstance(v, str) and EPISODE_PATTERN.fullmatch(v) is not None,
    "odometer_km": _number,
    "location": _location,
    "freeze_frame": _freeze,
    "dtc_status": lambda v: isinstance(v, list) and len(v) <= 3 and all(map(_text, v)),
    "spn": _int,
    "fmi": _int,
    "occurrences": _int,
    "lamps": lambda v: (
        isinstance(v, dict) and len(v) <= 8 and all(_text(k) and _int(x) for k, x in v.items())
    ),
    "note": _text,
    "opened_seq": _int,
    "what": _text,
    "detail": lambda v: isinstance(v, str) and len(v) <= 4 * MAX_TEXT,
}
