"""An OBD-II ECU over ISO-TP (``can-isotp``): mode 01 PIDs from the vehicle model, DTC modes.

It answers on its physical address (0x7E0 -> 0x7E8) and on the functional address 0x7DF, like an
engine controller does. PIDs it does not support get a negative response (0x7F 01 0x12).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import can
import isotp

from canvoy.simulator.model import Vehicle
from canvoy.wire.dtc import encode_dtc

SUPPORTED: dict[int, Callable[[Vehicle], bytes]] = {
    0x04: lambda v: bytes([round(v.load * 255 / 100)]),
    0x05: lambda v: bytes([max(0, min(255, round(v.coolant + 40)))]),
    0x0C: lambda v: round(v.rpm * 4).to_bytes(2, "big"),
    0x0D: lambda v: bytes([max(0, min(255, round(v.speed_kmh)))]),
    0x0F: lambda v: bytes([max(0, min(255, round(v.intake_air + 40)))]),
    0x11: lambda v: bytes([round(v.throttle * 255 / 100)]),
    0x2F: lambda v: bytes([round(v.fuel_level * 255 / 100)]),
    0x42: lambda v: round(v.battery_v * 1000).to_bytes(2, "big"),
    0x46: lambda v: bytes([round(v.ambient + 40)]),
}


def _supported_mask(base: int) -> bytes:
    mask = 0
    for pid in SUPPORTED:
        if base < pid <= base + 32:
            mask |= 1 << (32 - (pid - base))
    if any(pid > base + 32 for pid in SUPPORTED):
        mask |= 1  # "PIDs base+0x20.. supported" is announced in the last bit
    return mask.to_bytes(4, "big")


class ObdEcu:
    """Answers OBD-II requests from a vehicle model until ``stop``."""

    def __init__(
        self,
        bus: can.BusABC,
        vehicle: Vehicle,
        *,
        ecu: int = 0,
        pending: list[str] | None = None,
        permanent: list[str] | None = None,
    ) -> None:
        self.vehicle = vehicle
        self.pending = pending or []
        self.permanent = permanent or []
        self.answered = 0
        params = {"tx_padding": 0xAA, "blocking_send": False}
        address = isotp.Address(
            isotp.AddressingMode.Normal_11bits, rxid=0x7E0 + ecu, txid=0x7E8 + ecu
        )
        functional = isotp.Address(isotp.AddressingMode.Normal_11bits, rxid=0x7DF, txid=0x7E8 + ecu)
        self._notifier = can.Notifier(bus, [])
        self._stacks = [
            isotp.NotifierBasedCanStack(bus, self._notifier, address=address, params=params),
            isotp.NotifierBasedCanStack(bus, self._notifier, address=functional, params=params),
        ]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="obd-ecu", daemon=True)

    def answer(self, request: bytes) -> bytes:
        """The response to one request."""
        v = self.vehicle
        mode = request[0] if request else 0
        if mode == 0x01 and len(request) >= 2:
            pid = request[1]
            if pid in (0x00, 0x20, 0x40):
                return bytes([0x41, pid]) + _supported_mask(pid)
            if pid in SUPPORTED:
                return bytes([0x41, pid]) + SUPPORTED[pid](v)
            return bytes([0x7F, 0x01, 0x12])  # sub-function not supported
        if mode in (0x03, 0x07, 0x0A):
            codes = {0x03: v.dtcs, 0x07: self.pending, 0x0A: self.permanent}[mode]
            data = b"".join(encode_dtc(c).to_bytes(2, "big") for c in codes)
            return bytes([mode + 0x40, len(codes)]) + data
        return bytes([0x7F, mode, 0x11])  # service not supported

    def start(self) -> None:
        """Start answering."""
        for stack in self._stacks:
            stack.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop answering."""
        self._stop.set()
        self._thread.join(5)
        for stack in self._stacks:
            stack.stop()
        self._notifier.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            for stack in self._stacks:
                request = stack.recv(block=True, timeout=0.01)
                if request is not None:
                    self._stacks[0].send(self.answer(bytes(request)))
                    self.answered += 1
