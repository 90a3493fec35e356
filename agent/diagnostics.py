"""Diagnostic events from decoded signals: DTCs broadcast in a DBC message, as set/clear events.

Signals named in ``diagnostics.dtc_signals`` carry SAE J2012 two-byte codes (0 = none). The set
of active codes is the union of those signals' latest values per message; a code that appears
is a ``set`` event, one that disappears a ``clear`` event (transitions, never repeats). Events
carry the latest odometer and, when the policy collected it (consent), the location.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from canvoy.agent.collect import Sample, tee
from canvoy.agent.triggers import TriggerConfig
from canvoy.wire.dtc import decode_dtc

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnosticsConfig:
    """Which signals carry diagnostics, and which give events their context."""

    dtc_signals: tuple[str, ...] = ("*/DIAG_DTC/Dtc[0-9]*",)
    odometer: str = "*/INSTRUMENT/Odometer"
    latitude: str = "*/GNSS_POSITION/Latitude"
    longitude: str = "*/GNSS_POSITION/Longitude"
    freeze_frame: tuple[str, ...] = (
        "*/ENGINE_1/EngineSpeed",
        "*/ENGINE_1/EngineLoad",
        "*/ENGINE_2/CoolantTemp",
        "*/ENGINE_2/OilPressure",
        "*/VEHICLE_DYNAMICS/VehicleSpeed",
        "*/BATTERY_12V/BatteryVoltage",
    )
    lamps: dict[str, str] = field(default_factory=dict)  # lamp signal glob -> event code
    receipt_deadline_s: float = 300.0  # an event not confirmed by a bridge by then is overdue
    triggers: tuple[TriggerConfig, ...] = ()


class DtcWatcher:
    """Watches samples on their way to the batcher and emits DTC events. Thread-safe."""

    def __init__(
        self,
        config: DiagnosticsConfig,
        emit_events: Callable[[list[Mapping[str, Any]]], int | None],
    ) -> None:
        self.config = config
        self._emit_events = emit_events
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, int]] = {}  # message path -> signal key -> raw code
        self._active: dict[str, set[str]] = {}  # message path -> active codes
        self._context: dict[str, float] = {}
        self._role_cache: dict[str, frozenset[str]] = {}
        self._opened: dict[str, int] = {}  # code -> sequence number of the envelope that set it
        self._frozen: dict[str, tuple[int, Any]] = {}  # freeze-frame signal -> (t_ms, value)
        self._lamps_on: set[str] = set()
        self.events = 0

    def _roles(self, key: str) -> frozenset[str]:
        """What a sample key is to diagnostics, worked out once per key."""
        roles = self._role_cache.get(key)
        if roles is None:
            c = self.config
            path = key.split("@", 1)[0]
            found = set()
            for role, patterns in (
                ("odometer", (c.odometer,)),
                ("lat", (c.latitude,)),
                ("lon", (c.longitude,)),
                ("dtc", c.dtc_signals),
                ("lamp", tuple(c.lamps)),
                ("frozen", c.freeze_frame),
            ):
                if any(fnmatch.fnmatchcase(path, p) for p in patterns):
                    found.add(role)
            roles = self._role_cache[key] = frozenset(found)
        return roles

    def observe(self, sample: Sample) -> None:
        """Look at one sample; emit events when the active DTC set of its message changes."""
        roles = self._roles(sample.key)
        if not roles:
            return
        t, key, value = sample
        path = key.split("@", 1)[0]
        for name, ctx in (("odometer", "odometer_km"), ("lat", "lat"), ("lon", "lon")):
            if name in roles and not isinstance(value, str):
                self._context[ctx] = float(value)
        if "frozen" in roles:
            self._frozen[path] = (int(t * 1000), value)
        if "lamp" in roles:
            self._lamp(t, path, value)
        if "dtc" not in roles or isinstance(value, str):
            return
        message = key.rsplit("/", 1)[0]
        with self._lock:
            slots = self._values.setdefault(message, {})
            slots[key] = int(value)
            now = {code for raw in slots.values() if (code := decode_dtc(raw)) is not None}
            before = self._active.get(message, set())
            self._active[message] = now
            changes = [(code, "set") for code in sorted(now - before)]
            changes += [(code, "clear") for code in sorted(before - now)]
        if changes:
            events: list[Mapping[str, Any]] = [
                self._event(t, message, code, state) for code, state in changes
            ]
            seq = self._emit_events(events)
            with self._lock:
                for code, state in changes:
                    if state == "set" and seq is not None:
                        self._opened[code] = seq

    def _lamp(self, t: float, path: str, value: Any) -> None:
        """A warning lamp signal: on (non-zero) sets its code, off clears it."""
        code = next(v for p, v in self.config.lamps.items() if fnmatch.fnmatchcase(path, p))
        on = bool(value) and value not in ("Off", "off", "OFF")
        with self._lock:
            was = code in self._lamps_on
            if on == was:
                return
            if on:
                self._lamps_on.add(code)
            else:
                self._lamps_on.discard(code)
        message = path.rsplit("/", 1)[0]
        event = self._event(t, message, code, "set" if on else "clear")
        event["source"] = "lamp"
        seq = self._emit_events([event])
        if on and seq is not None:
            with self._lock:
                self._opened[code] = seq

    def context(self) -> dict[str, Any]:
        """Odometer and (when collected) location, for any event."""
        ctx = self._context
        out: dict[str, Any] = {}
        if "odometer_km" in ctx:
            out["odometer_km"] = round(ctx["odometer_km"], 1)
        if "lat" in ctx and "lon" in ctx:  # present only when the policy collects location
            out["location"] = {"lat": ctx["lat"], "lon": ctx["lon"]}
        return out

    def _event(self, t: float, message: str, code: str, state: str) -> dict[str, Any]:
        event: dict[str, Any] = {
            "type": "dtc",
            "t_ms": int(t * 1000),
            "code": code,
            "state": state,
            "source": "dbc",
            "signal": message,
        }
        if state == "set":  # like an OBD-II freeze frame: a snapshot when the code is set
            event["freeze_frame"] = {k: [list(v)] for k, v in sorted(self._frozen.items())}
        opened = self._opened.pop(code, None) if state == "clear" else None
        if opened is not None:
            event["opened_seq"] = opened  # the envelope that opened this episode
        event.update(self.context())
        self.events += 1
        log.info("diagnostic event: %s %s at %s", code, state, message)
        return event

    def wrap(self, emit: Callable[[Sample], None]) -> Callable[[Sample], None]:
        """An emit function that passes samples on and watches them."""
        return tee(emit, self.observe)
