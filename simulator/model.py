"""A physical model of the demo vehicle, stepped every 10 ms.

A drive cycle (idle, urban, highway) sets a target speed; the vehicle follows it within
acceleration limits; gear, engine speed, load, fuel and battery current follow from speed and
acceleration; the coolant warms towards the thermostat; the GNSS position moves along the
heading. Faults from the scenario bend these physics (see ``simulator/scenarios.py``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

STEP_S = 0.01
IDLE_RPM = 800.0
GEAR_UP_KMH = (0.0, 15.0, 30.0, 45.0, 62.0, 82.0)  # speed at which gear n+1 engages
RPM_PER_KMH = (0.0, 110.0, 65.0, 45.0, 35.0, 28.0, 23.0)
THERMOSTAT_C = 90.0
EARTH_M = 6_371_000.0


@dataclass
class Faults:
    """What the scenario is doing to the vehicle right now."""

    overheat: bool = False
    battery_age: float = 0.0  # 0 new .. 1 worn out: internal resistance grows
    sensor_dropout: bool = False


@dataclass
class Vehicle:
    """The state of the vehicle; ``step`` advances it by 10 ms."""

    rng: random.Random
    t: float = 0.0
    speed_kmh: float = 0.0
    accel: float = 0.0
    gear: int = 0
    rpm: float = IDLE_RPM
    load: float = 15.0
    throttle: float = 0.0
    fuel_rate: float = 0.8
    fuel_level: float = 72.0
    coolant: float = 20.0
    oil_temp: float = 20.0
    intake_air: float = 18.0
    ambient: float = 18.0
    brake_bar: float = 0.0
    steering: float = 0.0
    battery_v: float = 12.6
    battery_a: float = 0.0
    battery_soc: float = 88.0
    pack_v: float = 355.0
    pack_a: float = 0.0
    pack_soc: float = 64.0
    pack_temp: float = 24.0
    lat: float = 48.137154
    lon: float = 11.576124
    heading: float = 45.0
    odometer_km: float = 42_195.0
    door_open: bool = True
    faults: Faults = field(default_factory=Faults)
    dtcs: list[str] = field(default_factory=list)

    def step(self, target_kmh: float) -> None:
        """Advance 10 ms towards ``target_kmh``."""
        dt = STEP_S
        self.t += dt
        error = target_kmh - self.speed_kmh
        wanted = max(-3.5, min(2.2, error / 3.6 * 0.8))  # m/s2, gentle driver
        self.accel += (wanted - self.accel) * 0.05
        self.speed_kmh = max(0.0, self.speed_kmh + self.accel * 3.6 * dt)
        if self.speed_kmh == 0.0 and self.accel < 0:
            self.accel = 0.0
        self._powertrain()
        self._thermal(dt)
        self._battery(dt)
        self._position(dt)
        self.door_open = self.t < 4.0

    def _powertrain(self) -> None:
        v = self.speed_kmh
        if v < 1.0:
            self.gear = 0 if self.accel <= 0.05 else 1
        else:
            self.gear = 1 + sum(1 for limit in GEAR_UP_KMH[1:] if v >= limit)
        self.rpm = max(IDLE_RPM, v * RPM_PER_KMH[self.gear]) if self.gear else IDLE_RPM
        self.rpm += self.rng.uniform(-15, 15)
        drive = max(0.0, self.accel) * 28 + v * v * 0.0025 + (4.0 if v > 1 else 0.0)
        self.load = max(8.0, min(100.0, 12.0 + drive))
        self.throttle = max(0.0, min(100.0, self.load - 10.0 if v > 1 else 0.0))
        self.brake_bar = max(0.0, -self.accel * 25.0) if self.accel < -0.3 else 0.0
        self.fuel_rate = 0.7 + self.load * self.rpm / 3000.0 * 0.12
        self.fuel_level = max(0.0, self.fuel_level - self.fuel_rate * STEP_S / 3600 / 0.5)
        self.steering = 25.0 * math.sin(self.t / 7.0) if v < 60 else 3.0 * math.sin(self.t / 5.0)

    def _thermal(self, dt: float) -> None:
        heat = 0.02 + self.load * 0.0009
        if self.faults.overheat:
            heat += 0.45  # a failed fan / low coolant: the thermostat cannot hold it
            limit = 128.0
        else:
            limit = THERMOSTAT_C
        if self.coolant < limit:
            self.coolant = min(limit, self.coolant + heat * dt * 4.0)
        else:
            self.coolant -= (self.coolant - limit) * dt * 0.05
        self.oil_temp += (self.coolant - 5.0 - self.oil_temp) * dt * 0.01
        self.intake_air = self.ambient + 6.0 + self.load * 0.08

    def _battery(self, dt: float) -> None:
        running = self.rpm > 500
        resistance = 0.012 * (1.0 + 6.0 * self.faults.battery_age)
        draw = 25.0 + self.load * 0.9
        self.battery_a = -draw if not running else 18.0 - draw * 0.2
        sag = max(0.0, draw * resistance * self.faults.battery_age * 4.0)
        self.battery_v = (14.1 if running else 12.5) - sag + self.rng.uniform(-0.02, 0.02)
        self.battery_soc = max(0.0, min(100.0, self.battery_soc + self.battery_a * dt / 3600))
        self.pack_a = self.accel * 120.0 + self.speed_kmh * 0.2
        self.pack_v = 355.0 - self.pack_a * 0.08 * (1.0 + 3.0 * self.faults.battery_age)
        self.pack_soc = max(0.0, min(100.0, self.pack_soc - self.pack_a * dt / 3600 / 0.4))
        self.pack_temp += (24.0 + abs(self.pack_a) * 0.05 - self.pack_temp) * dt * 0.002

    def _position(self, dt: float) -> None:
        metres = self.speed_kmh / 3.6 * dt
        self.odometer_km += metres / 1000.0
        self.heading = (self.heading + self.steering * 0.0004 * self.speed_kmh * dt) % 360.0
        rad = math.radians(self.heading)
        self.lat += math.degrees(metres * math.cos(rad) / EARTH_M)
        self.lon += math.degrees(
            metres * math.sin(rad) / (EARTH_M * math.cos(math.radians(self.lat)))
        )


def target_speed(kind: str, t_in: float, rng_phase: float) -> float:
    """The speed a driver aims for, ``t_in`` seconds into a cycle segment of ``kind``."""
    if kind == "idle":
        return 0.0
    if kind == "urban":
        # Stop-and-go: 50 s blocks of accelerate, cruise at 30-50 km/h, brake, wait at a light.
        phase = (t_in + rng_phase) % 50.0
        if phase > 42.0:
            return 0.0
        return 32.0 + 16.0 * math.sin((t_in + rng_phase) / 23.0) ** 2
    if kind == "highway":
        return 110.0 + 12.0 * math.sin(t_in / 60.0)
    raise ValueError(f"drive cycle segment {kind!r} is unknown: use idle, urban or highway")
