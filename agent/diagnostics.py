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
from dataclasses import dataclass
from typing import Any

from agent.collect import Sample, tee
from agent.triggers import TriggerConfig
from wire.dtc import decode_dtc

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class DiagnosticsConfig:
    """Which signals carry diagnostics, and which give events their context."""

    dtc_signals: tuple[str, ...] = ("*/DIAG_DTC/Dtc[0-9]*",)
    odometer: str = "*/INSTRUMENT/Odometer"
    latitude: str = "*/GNSS_POSITION/Latitude"
    longitude: str = "*/GNSS_POSITION/Longitude"
    freeze_frame: tuple[str, ...] = (
        "*/ENGINE_1/EngineSpeed", "*/ENGINE_1/EngineLoad", "*/ENGINE_2/CoolantTemp",
        "*/ENGINE_2/OilPressure", "*/VEHICLE_DYNAMICS/VehicleSpeed", "*/BATTERY_12V/BatteryVoltage",
    )  # fmt: skip
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
        self._is_dtc: dict[str, bool] = {}
        self._opened: dict[str, int] = {}
        self._frozen: dict[str, tuple[int, Any]] = {}  # freeze-frame signal -> (t_ms, value)
        self._is_frozen: dict[str, bool] = {}  # code -> sequence number of the envelope that set it
        self.events = 0

    def _matches(self, key: str) -> bool:
        known = self._is_dtc.get(key)
        if known is None:
            path = key.split("@", 1)[0]
            known = self._is_dtc[key] = any(
                fnmatch.fnmatchcase(path, p) for p in self.config.dtc_signals
            )
        return known

    def observe(self, sample: Sample) -> None:
        """Look at one sample; emit events when the active DTC set of its message changes."""
        t, key, value = sample
        c = self.config
        path = key.split("@", 1)[0]
        if fnmatch.fnmatchcase(path, c.odometer):
            self._context["odometer_km"] = float(value)
            return
        if fnmatch.fnmatchcase(path, c.latitude):
            self._context["lat"] = float(value)
            return
        if fnmatch.fnmatchcase(path, c.longitude):
            self._context["lon"] = float(value)
            return
        frozen = self._is_frozen.get(key)
        if frozen is None:
            frozen = self._is_frozen[key] = any(
                fnmatch.fnmatchcase(path, p) for p in c.freeze_frame
            )
        if frozen:
            self._frozen[path] = (int(t * 1000), value)
        if not self._matches(key) or isinstance(value, str):
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
            "type": "dtc", "t_ms": int(t * 1000), "code": code, "state": state,
            "source": "dbc", "signal": message,
        }  # fmt: skip
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
