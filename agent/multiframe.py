"""Multi-frame messages for the databases: J1939 transport (BAM, RTS/CTS) and ISO-TP payloads.

A database can define a message longer than one frame: a J1939 PGN sent with the transport
protocol (TP.CM / TP.DT), or an ISO-TP payload such as a UDS response on a classic CAN id (a
message longer than 8 bytes on an id whose frames are not CAN FD). ``Transport`` rebuilds such
payloads from the frames, per bus channel, so that they are decoded like any other message.

ISO-TP payloads are laid out as CSS Electronics' databases (``tp_uds.dbc``) lay them out: byte
0 is the low byte of the ISO-TP length and the payload follows, so a UDS response's service id
is byte 1 and its data identifier bytes 2-3. A payload shorter than its message decodes the
signals that fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import can

from canvoy.agent.database import EXTENDED, Index, pgn_of
from canvoy.agent.isotp import PassiveReceiver
from canvoy.agent.j1939 import PGN_TP_CM, PGN_TP_DT, Reassembler

CLASSIC_BYTES = 8
MAX_ISOTP_IDS = 256  # ids with a receiver per channel; a bus has a handful of ISO-TP ids


@dataclass(slots=True)
class TransportStats:
    """Frames that belonged to multi-frame messages, and the messages they made."""

    frames: int = 0
    reassembled: int = 0
    dropped_ids: int = 0  # ISO-TP ids beyond MAX_ISOTP_IDS, not followed


def is_transport_key(index: Index, key: int) -> bool:
    """True for a J1939 TP.CM or TP.DT frame on a J1939 bus."""
    return (
        index.j1939 and bool(key & EXTENDED) and pgn_of(key & ~EXTENDED) in (PGN_TP_CM, PGN_TP_DT)
    )


def wants_isotp(length: int, msg: can.Message) -> bool:
    """True when a frame is one piece of a longer message (ISO-TP on classic CAN)."""
    return length > CLASSIC_BYTES and not msg.is_fd and len(msg.data) <= CLASSIC_BYTES


class Transport:
    """Rebuilds multi-frame payloads, per channel; not thread-safe (one per bus thread)."""

    def __init__(self) -> None:
        self.stats = TransportStats()
        self._j1939: dict[object, Reassembler] = {}
        self._isotp: dict[tuple[object, int], PassiveReceiver] = {}

    def j1939(self, msg: can.Message) -> tuple[int, bytes] | None:
        """Take one TP frame; return ``(frame key, payload)`` when it completes a message.

        The key is that of a frame of the reassembled PGN from the sender, so that the index
        finds the PGN's message as for a single frame.
        """
        self.stats.frames += 1
        reassembler = self._j1939.get(msg.channel)
        if reassembler is None:
            reassembler = self._j1939[msg.channel] = Reassembler()
        done = reassembler.feed(msg)
        if done is None:
            return None
        pgn, source, payload = done
        self.stats.reassembled += 1
        priority = (msg.arbitration_id >> 26) & 7
        return (priority << 26 | pgn << 8 | source) | EXTENDED, payload

    def isotp(self, msg: can.Message) -> list[bytes]:
        """Take one frame of an ISO-TP id; return the payloads it completed, laid out for the
        database (the length's low byte first)."""
        self.stats.frames += 1
        if msg.arbitration_id > (0x1FFFFFFF if msg.is_extended_id else 0x7FF):
            return []  # not a valid id of its format: no ISO-TP stack takes it
        slot = (msg.channel, msg.arbitration_id | (EXTENDED if msg.is_extended_id else 0))
        receiver = self._isotp.get(slot)
        if receiver is None:
            if len(self._isotp) >= MAX_ISOTP_IDS:
                self.stats.dropped_ids += 1
                return []
            receiver = self._isotp[slot] = PassiveReceiver(
                msg.arbitration_id, extended=msg.is_extended_id
            )
        done = receiver.feed(msg)
        self.stats.reassembled += len(done)
        return [bytes([len(p) & 0xFF]) + p for p in done]
