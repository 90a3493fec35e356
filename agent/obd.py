"""OBD-II over ISO-TP (SAE J1979 / ISO 15031-5): ECU discovery, mode 01 PIDs, DTC modes.

How an aftermarket device on the OBD port sees a car without a proprietary DBC. Requests go to
the functional address 0x7DF (discovery) or an ECU's physical address 0x7E0-0x7E7; responses
come from 0x7E8-0x7EF (the 29-bit variant: 0x18DB33F1 and 0x18DAxxF1 / 0x18DAF1xx). Timeouts and
negative responses are counted, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import can

from canvoy.agent.collect import Sample
from canvoy.agent.episodes import EpisodeTracker, Fault, Transition
from canvoy.agent.isotp import IsoTpClient
from canvoy.errors import ConfigError, TransportError
from canvoy.wire.dtc import decode_dtc
from canvoy.wire.events import DtcEvent

log = logging.getLogger(__name__)

FUNCTIONAL_11, FUNCTIONAL_29 = 0x7DF, 0x18DB33F1
NEGATIVE = 0x7F


@dataclass(frozen=True, slots=True)
class Pid:
    """A mode 01 parameter: its name, unit and formula over the data bytes A, B, ..."""

    name: str
    unit: str
    size: int
    formula: Callable[[bytes], float]


PIDS: dict[int, Pid] = {
    0x04: Pid("EngineLoad", "%", 1, lambda d: d[0] * 100 / 255),
    0x05: Pid("CoolantTemp", "degC", 1, lambda d: d[0] - 40),
    0x0B: Pid("IntakeManifoldPressure", "kPa", 1, lambda d: d[0]),
    0x0C: Pid("EngineSpeed", "rpm", 2, lambda d: (256 * d[0] + d[1]) / 4),
    0x0D: Pid("VehicleSpeed", "km/h", 1, lambda d: d[0]),
    0x0F: Pid("IntakeAirTemp", "degC", 1, lambda d: d[0] - 40),
    0x10: Pid("MafRate", "g/s", 2, lambda d: (256 * d[0] + d[1]) / 100),
    0x11: Pid("ThrottlePosition", "%", 1, lambda d: d[0] * 100 / 255),
    0x1F: Pid("RunTime", "s", 2, lambda d: 256 * d[0] + d[1]),
    0x2F: Pid("FuelLevel", "%", 1, lambda d: d[0] * 100 / 255),
    0x31: Pid("DistanceSinceCodesCleared", "km", 2, lambda d: 256 * d[0] + d[1]),
    0x42: Pid("ControlModuleVoltage", "V", 2, lambda d: (256 * d[0] + d[1]) / 1000),
    0x46: Pid("AmbientTemp", "degC", 1, lambda d: d[0] - 40),
    0x5C: Pid("OilTemp", "degC", 1, lambda d: d[0] - 40),
}
DTC_MODES = {0x03: "stored", 0x07: "pending", 0x0A: "permanent"}


def parse_pid(pid: int, response: bytes) -> float:
    """The physical value of a mode 01 response ``41 <pid> A B ...``.

    Raises:
        TransportError: a negative or malformed response.
    """
    spec = PIDS[pid]
    if len(response) < 2 + spec.size or response[0] != 0x41 or response[1] != pid:
        raise TransportError(f"unexpected response to PID 0x{pid:02X}: {response.hex()}")
    return round(spec.formula(response[2 : 2 + spec.size]), 3)


def parse_dtcs(mode: int, response: bytes) -> list[str]:
    """DTCs of a mode 03/07/0A response ``<mode+0x40> <count> (hi lo)*`` as ``P0217``.

    Raises:
        TransportError: a negative or malformed response.
    """
    if not response or response[0] != mode + 0x40:
        raise TransportError(f"unexpected response to mode 0x{mode:02X}: {response.hex()}")
    pairs = response[2:]  # byte 1 is the number of DTCs on CAN (ISO 15765-4)
    codes = []
    for i in range(0, len(pairs) - 1, 2):
        code = decode_dtc(pairs[i] << 8 | pairs[i + 1])
        if code is not None:
            codes.append(code)
    return codes


@dataclass(frozen=True, slots=True, kw_only=True)
class ObdConfig:
    """What to poll on a bus through the OBD port (``buses[].obd`` in the agent config)."""

    pids: dict[str, float] = field(default_factory=lambda: {"0C": 1.0, "0D": 1.0, "05": 10.0})
    dtc_interval_s: float = 30.0
    timeout_s: float = 1.0
    extended: bool = False  # 29-bit OBD addressing

    def __post_init__(self) -> None:
        for text, period in self.pids.items():
            try:
                pid = int(text, 16)
            except ValueError:
                pid = -1
            if pid not in PIDS:
                known = ", ".join(f"{p:02X}" for p in PIDS)
                raise ConfigError(f"obd.pids: PID {text!r} is not supported (use one of {known})")
            if period <= 0:
                raise ConfigError(f"obd.pids.{text}: the period must be positive seconds")


def response_filters(config: ObdConfig) -> list[dict[str, Any]]:
    """python-can ``can_filters`` that let the ECUs' responses through a filtered bus."""
    if config.extended:
        return [{"can_id": 0x18DAF100, "can_mask": 0x1FFFFF00, "extended": True}]
    return [{"can_id": 0x7E8, "can_mask": 0x7F8, "extended": False}]


@dataclass(slots=True)
class ObdStats:
    """Requests and what became of them."""

    requests: int = 0
    responses: int = 0
    timeouts: int = 0
    negative: int = 0
    ecus: list[int] = field(default_factory=list)


class ObdPoller:
    """Discovers ECUs, polls PIDs as samples, and reads DTCs into set/clear events."""

    def __init__(
        self,
        bus_name: str,
        bus: can.BusABC,
        notifier: can.Notifier,
        config: ObdConfig,
        *,
        emit: Callable[[Sample], None],
        episodes: EpisodeTracker,
    ) -> None:
        self.name = bus_name
        self.bus = bus
        self.notifier = notifier
        self.config = config
        self.emit = emit
        self.episodes = episodes
        self.stats = ObdStats()
        self.clients: dict[int, IsoTpClient] = {}
        self._lists: dict[int, dict[str, list[str]]] = {}  # ECU -> stored/pending/permanent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"obd-{bus_name}", daemon=True)

    def _ids(self, ecu: int) -> tuple[int, int]:
        """(request id, response id) of ECU number ``ecu`` (0-7)."""
        if self.config.extended:
            return 0x18DA00F1 | (ecu << 8), 0x18DAF100 | ecu
        return 0x7E0 + ecu, 0x7E8 + ecu

    def discover(self) -> list[int]:
        """Ask every ECU for its supported PIDs (01 00) on the functional address."""
        functional = FUNCTIONAL_29 if self.config.extended else FUNCTIONAL_11
        responses = {self._ids(e)[1]: e for e in range(8)}
        found: set[int] = set()
        reader = can.BufferedReader()
        self.notifier.add_listener(reader)
        try:
            request = bytes([0x02, 0x01, 0x00]) + b"\x55" * 5
            self.bus.send(
                can.Message(
                    arbitration_id=functional, data=request, is_extended_id=self.config.extended
                )
            )
            deadline = time.monotonic() + self.config.timeout_s
            while time.monotonic() < deadline:
                msg = reader.get_message(0.05)
                if msg is not None and msg.arbitration_id in responses:
                    found.add(responses[msg.arbitration_id])
        finally:
            self.notifier.remove_listener(reader)
        self.stats.ecus = sorted(found)
        return self.stats.ecus

    def _client(self, ecu: int) -> IsoTpClient:
        client = self.clients.get(ecu)
        if client is None:
            txid, rxid = self._ids(ecu)
            client = self.clients[ecu] = IsoTpClient(
                self.bus,
                self.notifier,
                txid=txid,
                rxid=rxid,
                extended=self.config.extended,
                timeout_s=self.config.timeout_s,
            )
        return client

    def ask(self, ecu: int, request: bytes) -> bytes | None:
        """One request; None on a timeout or a negative response (both counted)."""
        self.stats.requests += 1
        try:
            response = self._client(ecu).request(request)
        except TransportError:
            self.stats.timeouts += 1
            return None
        if response and response[0] == NEGATIVE:
            self.stats.negative += 1
            return None
        self.stats.responses += 1
        return response

    def poll_pid(self, ecu: int, pid: int) -> float | None:
        """Read one PID and emit it as ``<bus>/OBD_<ecu>/<name>``."""
        response = self.ask(ecu, bytes([0x01, pid]))
        if response is None:
            return None
        try:
            value = parse_pid(pid, response)
        except TransportError:
            self.stats.negative += 1
            return None
        self.emit(Sample(time.time(), f"{self.name}/OBD_{0x7E8 + ecu:X}/{PIDS[pid].name}", value))
        return value

    def read_dtcs(self, ecu: int) -> dict[str, list[str]]:
        """Stored, pending and permanent DTCs, reported to the episode tracker.

        One episode per code and ECU, open while the code is stored or pending; a change of
        the lists it is in (pending -> stored, + permanent) is an ``update``. A permanent code
        alone (the ECU has not yet confirmed the repair) keeps no episode open. A mode that
        did not answer keeps what it said last.
        """
        result: dict[str, list[str]] = {}
        for mode, kind in DTC_MODES.items():
            response = self.ask(ecu, bytes([mode]))
            if response is None:
                continue
            try:
                result[kind] = parse_dtcs(mode, response)
            except TransportError:
                self.stats.negative += 1
        if result:
            known = self._lists.setdefault(ecu, {})
            known.update(result)
            self._report(ecu, known)
        return result

    def _report(self, ecu: int, lists: dict[str, list[str]]) -> None:
        status: dict[str, list[str]] = {}
        for kind in DTC_MODES.values():
            for code in lists.get(kind, []):
                status.setdefault(code, []).append(kind)
        # Permanent alone means "not yet confirmed repaired": listed, but no open fault.
        active = {
            code: Fault(code, tuple(kinds))
            for code, kinds in sorted(status.items())
            if kinds != ["permanent"]
        }
        t_ms = int(time.time() * 1000)
        build = partial(self._event, t_ms)
        self.episodes.report("obd", f"{self.name}/OBD_{0x7E8 + ecu:X}", active, build, t_ms)

    def _event(self, t_ms: int, step: Transition) -> DtcEvent:
        e = step.episode
        return DtcEvent(
            t_ms=t_ms,
            code=e.code,
            state=step.state,
            source="obd",
            signal=e.scope,
            episode=e.id,
            dtc_status=[str(k) for k in e.detail] if step.state != "clear" else None,
        )

    def start(self) -> None:
        """Poll in a thread until ``stop``."""
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and the ISO-TP stacks."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for client in self.clients.values():
            client.close()

    def _run(self) -> None:
        ecus: list[int] = []
        due: dict[tuple[int, str], float] = {}
        while not self._stop.is_set():
            try:
                if not ecus:
                    ecus = self.discover()
                    if not ecus:
                        self._stop.wait(5.0)
                        continue
                now = time.monotonic()
                for ecu in ecus:
                    for text, period in self.config.pids.items():
                        if now >= due.get((ecu, text), 0.0):
                            due[(ecu, text)] = now + period
                            self.poll_pid(ecu, int(text, 16))
                    if now >= due.get((ecu, "dtc"), 0.0):
                        due[(ecu, "dtc")] = now + self.config.dtc_interval_s
                        self.read_dtcs(ecu)
            except Exception as exc:  # the poller logs, counts and carries on
                log.warning("OBD polling on %s: %s", self.name, exc)
                self.stats.timeouts += 1
            self._stop.wait(0.05)
