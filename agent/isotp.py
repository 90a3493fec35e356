"""ISO-TP (ISO 15765-2) through the ``can-isotp`` package: passive reassembly and a client.

``PassiveReceiver`` and ``reassemble`` rebuild the payloads one id sent (single frames and
first/consecutive frames) from traffic, e.g. UDS or OBD-II responses on a bus or in a log.
``IsoTpClient`` sends a request to one ECU and waits for its response over a live bus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import can
import isotp

from canvoy.errors import TransportError

log = logging.getLogger(__name__)
MAX_PAYLOAD_BYTES = 4095
# The stack logs every interrupted reception as a warning; heard traffic has many (a response
# cut short by the next request), so a passive receiver counts them instead.
_PASSIVE_LOG = "canvoy.agent.isotp.passive"
logging.getLogger(_PASSIVE_LOG).setLevel(logging.ERROR)


def _address(rxid: int, txid: int, extended: bool) -> isotp.Address:
    mode = isotp.AddressingMode.Normal_29bits if extended else isotp.AddressingMode.Normal_11bits
    return isotp.Address(mode, rxid=rxid, txid=txid)


class PassiveReceiver:
    """Rebuilds the ISO-TP payloads one id sends, frame by frame, from traffic it only hears.

    Flow-control frames the logger may not have recorded are not needed: the stack's own flow
    control goes nowhere, and consecutive frames are taken as they come. A payload is at most
    ``MAX_PAYLOAD_BYTES`` (the classic 12-bit ISO-TP length).
    """

    def __init__(self, rxid: int, *, txid: int | None = None, extended: bool = False) -> None:
        self.rxid = rxid
        self.errors = 0
        self._pending: list[isotp.CanMessage] = []
        self._stack = isotp.TransportLayerLogic(
            rxfn=lambda _timeout: self._pending.pop(0) if self._pending else None,
            txfn=lambda _msg: None,
            # Responses answer requests 8 ids below (0x7E8 <- 0x7E0); only rxid matters here.
            address=_address(rxid, txid if txid is not None else rxid ^ 8, extended),
            error_handler=self._error,
            params={
                "rx_consecutive_frame_timeout": 10_000,
                "can_fd": True,
                "max_frame_size": MAX_PAYLOAD_BYTES,
                "logger_name": _PASSIVE_LOG,
            },
        )

    def _error(self, exc: Exception) -> None:
        self.errors += 1
        log.debug("ISO-TP 0x%X: %s", self.rxid, exc)

    def feed(self, msg: can.Message) -> list[bytes]:
        """Take one frame of ``rxid``; return the payloads it completed (usually none)."""
        self._pending.append(
            isotp.CanMessage(
                arbitration_id=msg.arbitration_id,
                data=bytes(msg.data),
                extended_id=msg.is_extended_id,
            )
        )
        while self._pending:
            self._stack.process()
        out = []
        while self._stack.available():
            data = self._stack.recv()
            if data is not None:
                out.append(bytes(data))
        return out


def reassemble(
    frames: Iterable[can.Message], rxid: int, *, txid: int | None = None, extended: bool = False
) -> list[bytes]:
    """Every ISO-TP payload received on ``rxid`` in ``frames``, in order."""
    receiver = PassiveReceiver(rxid, txid=txid, extended=extended)
    out: list[bytes] = []
    for msg in frames:
        if msg.arbitration_id == rxid and not msg.is_error_frame:
            out += receiver.feed(msg)
    return out


class IsoTpClient:
    """Request/response with one ECU over a live bus.

    The bus is read by one ``can.Notifier`` (the agent's), so the stack listens through it
    instead of calling ``recv`` itself and taking frames away from the decoder.
    """

    def __init__(
        self,
        bus: can.BusABC,
        notifier: can.Notifier,
        *,
        txid: int,
        rxid: int,
        extended: bool = False,
        timeout_s: float = 1.0,
    ) -> None:
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._stack = isotp.NotifierBasedCanStack(
            bus,
            notifier,
            address=_address(rxid, txid, extended),
            params={
                "tx_padding": 0x55,
                "rx_flowcontrol_timeout": int(timeout_s * 1000),
                "rx_consecutive_frame_timeout": int(timeout_s * 1000),
                "blocking_send": False,
            },
        )
        self._stack.start()

    def request(self, payload: bytes) -> bytes:
        """Send ``payload`` and return the response.

        Raises:
            TransportError: no (complete) response within ``timeout_s``.
        """
        with self._lock:
            self._stack.clear_rx_queue()
            self._stack.send(payload)
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                data = self._stack.recv(block=True, timeout=0.05)
                if data is not None:
                    return bytes(data)
        raise TransportError(f"no ISO-TP response to {payload.hex()} within {self.timeout_s} s")

    def close(self) -> None:
        """Stop the stack's thread."""
        self._stack.stop()
