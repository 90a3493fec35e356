"""Frames from the vehicle model through a DBC, onto a bus (live) or into a log file (fast).

Every message of the databases is sent at its ``GenMsgCycleTime`` (100 ms when it has none);
signals the model knows get the model's value, others their minimum. Counters count, checksums
are the XOR of the other bytes. Frames of an FD database go to the FD channel.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools
from cantools.database.can import Database, Message

from canvoy import dbc as shipped
from canvoy import mf4
from canvoy.errors import ConfigError
from canvoy.simulator.model import STEP_S, Vehicle, target_speed
from canvoy.simulator.scenarios import FaultState, Scenario
from canvoy.wire.dtc import encode_dtc

DEMO_DBC = shipped.path(shipped.DEMO_DBC)
DEMO_HV_DBC = shipped.path(shipped.DEMO_HV_DBC)
START_TIME = 1_767_261_600.0  # 2026-01-01 10:00 UTC: recorded drives start here
UNKNOWN_IDS = (0x5F0, 0x6A1, 0x7B2)


def _dtc(v: Vehicle, i: int) -> int:
    return encode_dtc(v.dtcs[i]) if len(v.dtcs) > i else 0


# What the model provides, by signal name.
SIGNALS: dict[str, Callable[[Vehicle], float]] = {
    "EngineSpeed": lambda v: v.rpm,
    "EngineLoad": lambda v: v.load,
    "ThrottlePosition": lambda v: v.throttle,
    "FuelRate": lambda v: v.fuel_rate,
    "CoolantTemp": lambda v: v.coolant,
    "OilTemp": lambda v: v.oil_temp,
    "OilPressure": lambda v: 120.0 + v.rpm * 0.07,
    "IntakeAirTemp": lambda v: -40.0 if v.faults.sensor_dropout else v.intake_air,
    "CoolantFanDuty": lambda v: 0.0 if v.faults.overheat else max(0.0, (v.coolant - 85) * 8),
    "Gear": lambda v: float(v.gear),
    "GearSelector": lambda v: 3.0 if v.t > 3 else 0.0,
    "TransOilTemp": lambda v: v.oil_temp - 8.0,
    "WheelSpeedFL": lambda v: v.speed_kmh * 1.002,
    "WheelSpeedFR": lambda v: v.speed_kmh * 0.998,
    "WheelSpeedRL": lambda v: v.speed_kmh * 1.001,
    "WheelSpeedRR": lambda v: v.speed_kmh * 0.999,
    "VehicleSpeed": lambda v: v.speed_kmh,
    "BrakePressure": lambda v: v.brake_bar,
    "BrakePedal": lambda v: 1.0 if v.brake_bar > 0 else 0.0,
    "SteeringAngle": lambda v: v.steering,
    "LongAccel": lambda v: v.accel,
    "BatteryVoltage": lambda v: v.battery_v,
    "BatteryCurrent": lambda v: v.battery_a,
    "BatterySoC": lambda v: v.battery_soc,
    "BatteryTemp": lambda v: v.ambient + 8.0,
    "CellTemp1": lambda v: v.pack_temp,
    "CellTemp2": lambda v: v.pack_temp + 1.0,
    "CellTemp3": lambda v: v.pack_temp + 0.5,
    "CellTemp4": lambda v: v.pack_temp - 0.5,
    "CellVoltageMin": lambda v: v.pack_v / 96 - 0.01,
    "CellVoltageMax": lambda v: v.pack_v / 96 + 0.01,
    "AmbientTemp": lambda v: v.ambient,
    "CabinTemp": lambda v: 21.0,
    "HvacFanLevel": lambda v: 3.0,
    "Latitude": lambda v: v.lat,
    "Longitude": lambda v: v.lon,
    "Heading": lambda v: v.heading,
    "GnssSpeed": lambda v: v.speed_kmh,
    "Altitude": lambda v: 519.0,
    "Satellites": lambda v: 11.0,
    "DoorFL": lambda v: 1.0 if v.door_open else 0.0,
    "Locked": lambda v: 0.0 if v.door_open else 1.0,
    "Ignition": lambda v: 2.0,
    "Headlights": lambda v: 2.0,
    "Odometer": lambda v: v.odometer_km,
    "FuelLevel": lambda v: v.fuel_level,
    "MilLamp": lambda v: 1.0 if v.dtcs else 0.0,
    "CoolantWarning": lambda v: 1.0 if v.coolant > 115 else 0.0,
    "DtcCount": lambda v: float(len(v.dtcs)),
    "Dtc1": lambda v: float(_dtc(v, 0)),
    "Dtc2": lambda v: float(_dtc(v, 1)),
    "Dtc3": lambda v: float(_dtc(v, 2)),
    "PackVoltage": lambda v: v.pack_v,
    "PackCurrent": lambda v: v.pack_a,
    "PackSoC": lambda v: v.pack_soc,
    "PackTempMax": lambda v: v.pack_temp + 1.5,
    "PackTempMin": lambda v: v.pack_temp - 1.0,
    "IsolationResistance": lambda v: 2500.0,
    "ContactorState": lambda v: 2.0,
}


@dataclass
class _Schedule:
    message: Message
    every: int  # steps
    offset: int
    fd: bool
    count: int = 0


def _clamp(signal: Any, value: float) -> float:
    low = signal.minimum if signal.minimum is not None else value
    high = signal.maximum if signal.maximum is not None else value
    return min(max(value, low), high)


class Drive:
    """A scenario driven through the model, producing frames in time order."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int = 1,
        databases: Sequence[Path] = (DEMO_DBC, DEMO_HV_DBC),
        start: float = START_TIME,
    ) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.vehicle = Vehicle(rng=self.rng)
        self.faults = FaultState(scenario, self.rng)
        self.start = start
        self.schedules: list[_Schedule] = []
        for path in databases:
            db: Database = cantools.database.load_file(str(path))  # type: ignore[assignment]
            for message in db.messages:
                period_ms = message.cycle_time or 100
                every = max(1, round(period_ms / 1000 / STEP_S))
                self.schedules.append(
                    _Schedule(message, every, len(self.schedules) % every, message.is_fd)
                )

    def _values(self, schedule: _Schedule) -> dict[str, float]:
        v = self.vehicle
        values: dict[str, float] = {}
        message = schedule.message
        page = schedule.count % 2
        for signal in message.signals:
            name = signal.name
            lowered = name.lower()
            if signal.multiplexer_ids and page not in signal.multiplexer_ids:
                continue
            if signal.is_multiplexer:
                values[name] = float(page)
            elif "counter" in lowered:
                values[name] = float(schedule.count % (1 << signal.length))
            elif "checksum" in lowered:
                values[name] = 0.0
            elif name in SIGNALS:
                values[name] = _clamp(signal, SIGNALS[name](v))
            else:
                values[name] = float(signal.minimum or 0.0)
        return values

    def frames(self, duration_s: float) -> Iterator[tuple[can.Message, dict[str, float] | None]]:
        """Frames for ``duration_s`` seconds (the cycle repeats), each with the values it carries
        (None for injected noise)."""
        segments = self.scenario.segments
        total = self.scenario.duration_s
        phase = self.rng.uniform(0, 50)
        v = self.vehicle
        for step in range(round(duration_s / STEP_S)):
            v.step(self._target(segments, (step * STEP_S) % total, phase))
            self.faults.apply(v)
            base = self.start + step * STEP_S
            for i, s in enumerate(self.schedules):
                if step % s.every != s.offset:
                    continue
                values = self._values(s)
                data = bytearray(s.message.encode(values, strict=False))
                if any("checksum" in sig.name.lower() for sig in s.message.signals):
                    checksum = 0
                    for byte in data[:-1]:
                        checksum ^= byte
                    data[-1] = checksum
                s.count += 1
                yield (
                    can.Message(
                        timestamp=base + i * 0.0002,
                        arbitration_id=s.message.frame_id,
                        is_extended_id=s.message.is_extended_frame,
                        data=bytes(data),
                        is_fd=s.fd,
                        bitrate_switch=s.fd,
                        channel=1 if s.fd else 0,
                    ),
                    values,
                )
            yield from self._noise(base)

    @staticmethod
    def _target(segments: list[tuple[str, float]], t_cycle: float, phase: float) -> float:
        kind = segments[-1][0]
        for kind, seconds in segments:  # noqa: B007 - the segment we are in
            if t_cycle < seconds:
                break
            t_cycle -= seconds
        return target_speed(kind, t_cycle, phase)

    def _noise(self, base: float) -> Iterator[tuple[can.Message, None]]:
        errors, malformed, unknown = self.faults.noise(self.vehicle.t)
        for _ in range(errors):
            yield can.Message(timestamp=base + 0.005, is_error_frame=True, channel=0), None
        for _ in range(malformed):
            yield (
                can.Message(
                    timestamp=base + 0.006,
                    arbitration_id=0x100,
                    is_extended_id=False,
                    data=b"\x01\x02",
                    channel=0,
                ),
                None,
            )
        for _ in range(unknown):
            arb = UNKNOWN_IDS[self.rng.randrange(len(UNKNOWN_IDS))]
            yield (
                can.Message(
                    timestamp=base + 0.007,
                    arbitration_id=arb,
                    is_extended_id=False,
                    data=bytes(8),
                    channel=0,
                ),
                None,
            )


def open_logger(path: Path) -> can.Listener:
    """A python-can writer for ``path``, its format from the suffix.

    Raises:
        ConfigError: the format is unknown or needs an extra that is not installed, or the
            file cannot be created.
    """
    if path.suffix.lower() == ".mf4" and not mf4.load():
        raise ConfigError(
            f"cannot write {str(path)!r}: MF4 needs asammdf: pip install 'canvoy[mf4]' "
            "(or write .blf, .asc, .log, .trc, .csv or .db)"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {str(path)!r}: directory {str(path.parent)!r} is missing")
    try:
        logger: can.Listener = can.Logger(str(path))
    except OSError as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    except (ValueError, NotImplementedError) as exc:
        raise ConfigError(f"cannot write {str(path)!r}: {exc}") from exc
    return logger


def record(drive: Drive, path: Path, duration_s: float) -> int:
    """Write ``duration_s`` of the drive to a log file (format from the suffix); return frames.

    Raises:
        ConfigError: the file cannot be written in that format (see ``open_logger``).
    """
    count = 0
    logger = open_logger(path)
    try:
        for msg, _values in drive.frames(duration_s):
            logger.on_message_received(msg)
            count += 1
    except OSError as exc:  # a full disk while writing
        raise ConfigError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    finally:
        try:
            logger.stop()
        except OSError as exc:
            raise ConfigError(f"cannot finish {str(path)!r}: {exc.strerror or exc}") from exc
    return count


def run_live(
    drive: Drive,
    bus: can.BusABC,
    fd_bus: can.BusABC | None,
    duration_s: float,
    *,
    stop: threading.Event,
    speed: float = 1.0,
) -> int:
    """Send the drive onto ``bus`` (and FD frames onto ``fd_bus``) at real time; return frames."""
    sent = 0
    start_wall = time.monotonic()
    for msg, _values in drive.frames(duration_s):
        delay = start_wall + (msg.timestamp - drive.start) / speed - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        if stop.is_set():
            break
        target = fd_bus if msg.is_fd else bus
        if target is None:
            continue
        msg.timestamp = time.time()
        try:
            target.send(msg)
            sent += 1
        except can.CanError:
            continue  # a full transmit queue or a bus-off: the next cycle sends again
    return sent
