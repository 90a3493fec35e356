"""Diagnostic events from decoded signals: DTCs broadcast in a DBC message, and warning lamps.

Signals named in ``diagnostics.dtc_signals`` carry SAE J2012 two-byte codes (0 = none). The set
of active codes is the union of those signals' latest values per message, reported to the
episode tracker, which opens (``set``) and closes (``clear``) one episode per code. Events carry
the latest odometer and, when the policy collected it (consent), the location.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from canvoy.agent.collect import Sample, tee
from canvoy.agent.episodes import EpisodeTracker, Fault, Transition
from canvoy.agent.triggers import TriggerConfig
from canvoy.wire.dtc import decode_dtc
from canvoy.wire.events import MAX_FREEZE_SIGNALS, DtcEvent, DtcSource

log = logging.getLogger(__name__)
FRAME_SETTLE_S = 0.02  # the slots of one frame arrive within microseconds of each other


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
    resume_s: float = 60.0  # after a restart, how long an open episode waits for its source
    triggers: tuple[TriggerConfig, ...] = ()


class DtcWatcher:
    """Watches samples on their way to the batcher and reports DTCs and lamps. Thread-safe.

    The DTC slots of one message arrive as separate samples of the same frame (same time), so
    a message's active set is reported once its frame is complete: when a slot of its next
    frame arrives, or at a ``tick`` after ``FRAME_SETTLE_S``. Reporting slot by slot would see
    a code that moved from one slot to another as cleared and set again.
    """

    def __init__(self, config: DiagnosticsConfig, episodes: EpisodeTracker) -> None:
        self.config = config
        self.episodes = episodes
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, int]] = {}  # message path -> signal key -> raw code
        # message path -> (frame time, when its last slot arrived): slots still arriving
        self._pending: dict[str, tuple[float, float]] = {}
        self._context: dict[str, float] = {}
        self._role_cache: dict[str, frozenset[str]] = {}
        self._frozen: dict[str, tuple[int, Any]] = {}  # freeze-frame signal -> (t_ms, value)

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
        """Look at one sample; a DTC slot waits for the rest of its frame."""
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
        pending = self._pending.get(message)
        if pending is not None and pending[0] != t:
            self._report(message, pending[0])  # the previous frame of this message is done
        with self._lock:
            self._pending[message] = (t, time.monotonic())
            self._values.setdefault(message, {})[key] = int(value)

    def tick(self, *, settle_s: float = FRAME_SETTLE_S) -> None:
        """Report every message whose frame has had no new DTC slot for ``settle_s``."""
        now = time.monotonic()
        with self._lock:
            done = [(m, t) for m, (t, seen) in self._pending.items() if now - seen >= settle_s]
        for message, t in done:
            self._report(message, t)

    def _report(self, message: str, t: float) -> None:
        with self._lock:
            if self._pending.get(message, (None,))[0] == t:
                del self._pending[message]
            slots = self._values.get(message, {})
            codes = {code for raw in slots.values() if (code := decode_dtc(raw)) is not None}
        active = {code: Fault(code) for code in sorted(codes)}
        self.episodes.report("dbc", message, active, partial(self._event, t, "dbc"), _ms(t))

    def _lamp(self, t: float, path: str, value: Any) -> None:
        """A warning lamp signal: on (non-zero) holds its code's episode open, off closes it."""
        code = next(v for p, v in self.config.lamps.items() if fnmatch.fnmatchcase(path, p))
        on = bool(value) and value not in ("Off", "off", "OFF")
        active = {code: Fault(code)} if on else {}
        self.episodes.report("lamp", path, active, partial(self._event, t, "lamp"), _ms(t))

    def context(self) -> dict[str, Any]:
        """Odometer and (when collected) location, for any event."""
        ctx = self._context
        out: dict[str, Any] = {}
        if "odometer_km" in ctx:
            out["odometer_km"] = round(ctx["odometer_km"], 1)
        if "lat" in ctx and "lon" in ctx:  # present only when the policy collects location
            out["location"] = {"lat": ctx["lat"], "lon": ctx["lon"]}
        return out

    def _event(self, t: float, source: DtcSource, step: Transition) -> DtcEvent:
        frame = None
        if step.state == "set":  # like an OBD-II freeze frame: a snapshot when the code is set
            # At most the protocol's number of signals (the globs may match more).
            frozen = sorted(self._frozen.items())[:MAX_FREEZE_SIGNALS]
            frame = {k: [list(v)] for k, v in frozen}
        return DtcEvent(
            t_ms=_ms(t),
            code=step.episode.code,
            state=step.state,
            source=source,
            signal=step.episode.scope,
            episode=step.episode.id,
            freeze_frame=frame,
            **self.context(),
        )

    def wrap(self, emit: Callable[[Sample], None]) -> Callable[[Sample], None]:
        """An emit function that passes samples on and watches them."""
        return tee(emit, self.observe)


def _ms(t: float) -> int:
    return int(t * 1000)
