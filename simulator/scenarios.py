"""Scenarios: a drive cycle plus scripted faults, in YAML, deterministic for a given seed.

The shipped ones are package data of ``canvoy.dbc`` (``dbc/scenarios/<name>.yaml``);
``--scenario`` takes a name or a path. Fault types: ``overheat``, ``battery_ageing``,
``intermittent_sensor``, ``bus_noise``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from canvoy import dbc as shipped
from canvoy.config import build
from canvoy.errors import ConfigError
from canvoy.simulator.model import Vehicle, target_speed
from canvoy.wire.dtc import encode_dtc

FaultType = Literal["overheat", "battery_ageing", "intermittent_sensor", "bus_noise"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One scripted fault, active from ``start_s`` to ``end_s``."""

    type: FaultType
    start_s: float = 0.0
    end_s: float = 1e9
    dtc: str | None = None
    set_above: float = 110.0  # overheat: coolant (degC) that sets the DTC
    clear_below: float = 100.0  # overheat: coolant that clears it
    set_below: float = 11.8  # battery_ageing: 12 V rail (V) that sets the DTC
    age: float = 0.7
    rate_per_min: float = 2.0
    hold_s: float = 3.0
    error_per_s: float = 1.0
    malformed_per_s: float = 1.0
    unknown_per_s: float = 2.0

    def __post_init__(self) -> None:
        if self.dtc is not None:
            encode_dtc(self.dtc)
        if self.end_s < self.start_s:
            raise ConfigError(f"fault {self.type}: end_s is before start_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A drive cycle of ``[segment, seconds]`` and the faults on top of it."""

    description: str = ""
    cycle: tuple[tuple[str | float, ...], ...] = (("idle", 10.0),)
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    name: str = ""

    def __post_init__(self) -> None:
        for segment in self.cycle:
            if not (
                len(segment) == 2
                and isinstance(segment[0], str)
                and isinstance(segment[1], float)
                and segment[1] > 0
            ):
                raise ConfigError(f"cycle: {list(segment)} must be [idle|urban|highway, seconds]")
            try:
                target_speed(segment[0], 0.0, 0.0)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc

    @property
    def segments(self) -> list[tuple[str, float]]:
        """The cycle as (kind, seconds) pairs."""
        return [(str(kind), float(seconds)) for kind, seconds in self.cycle]

    @property
    def duration_s(self) -> float:
        """The length of one pass of the drive cycle."""
        return sum(seconds for _kind, seconds in self.segments)


def load_scenario(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file.

    Raises:
        ConfigError: unknown name, unreadable file, or a bad key (named).
    """
    path = Path(name_or_path)
    if not path.suffix and name_or_path in shipped.scenarios():
        path = shipped.path(f"scenarios/{name_or_path}.yaml")
    if not path.exists():
        known = ", ".join(shipped.scenarios())
        raise ConfigError(f"scenario {name_or_path!r} not found: use one of {known} or a file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}") from exc
    scenario = build(Scenario, {**data, "name": path.stem}, f"scenario {path.stem}")
    return scenario


class FaultState:
    """Applies a scenario's faults to the vehicle, step by step, deterministically."""

    def __init__(self, scenario: Scenario, rng: random.Random) -> None:
        self.scenario = scenario
        self.rng = rng
        self.dropout_until = -1.0
        self.active_dtcs: dict[str, float] = {}  # code -> time set
        self.history: list[tuple[float, str, str]] = []  # (t, code, "set"|"clear")

    def _set(self, t: float, code: str | None, on: bool) -> None:
        if code is None:
            return
        if on and code not in self.active_dtcs:
            self.active_dtcs[code] = t
            self.history.append((t, code, "set"))
        elif not on and code in self.active_dtcs:
            del self.active_dtcs[code]
            self.history.append((t, code, "clear"))

    def apply(self, v: Vehicle) -> None:
        """Update ``v.faults`` and the active DTCs for time ``v.t``."""
        t = v.t
        v.faults.overheat = False
        v.faults.sensor_dropout = False
        for f in self.scenario.faults:
            active = f.start_s <= t < f.end_s
            if f.type == "overheat":
                v.faults.overheat = v.faults.overheat or active
                if v.coolant > f.set_above:
                    self._set(t, f.dtc, True)
                elif v.coolant < f.clear_below:
                    self._set(t, f.dtc, False)
            elif f.type == "battery_ageing":
                v.faults.battery_age = f.age if active else 0.0
                if active and v.battery_v < f.set_below:
                    self._set(t, f.dtc, True)
            elif f.type == "intermittent_sensor" and active:
                if t >= self.dropout_until and self.rng.random() < f.rate_per_min / 60 * 0.01:
                    self.dropout_until = t + f.hold_s
                dropped = t < self.dropout_until
                v.faults.sensor_dropout = dropped
                self._set(t, f.dtc, dropped)
        v.dtcs = sorted(self.active_dtcs)

    def noise(self, t: float) -> tuple[int, int, int]:
        """How many (error, malformed, unknown-id) frames to inject in this 10 ms step."""
        counts = [0, 0, 0]
        for f in self.scenario.faults:
            if f.type == "bus_noise" and f.start_s <= t < f.end_s:
                for i, rate in enumerate((f.error_per_s, f.malformed_per_s, f.unknown_per_s)):
                    counts[i] += self.rng.random() < rate * 0.01
        return counts[0], counts[1], counts[2]
