"""A J1939 DM1 broadcaster: active DTCs as a single frame, or as BAM multi-packet messages."""

from __future__ import annotations

from collections.abc import Sequence

import can

PRIORITY_6 = 6 << 26
PGN_DM1 = 0xFECA
PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
GLOBAL = 0xFF


def _id(pgn: int, source: int, dest: int = GLOBAL) -> int:
    if (pgn >> 8) & 0xFF < 240:  # PDU1: the destination goes into the PS byte
        pgn = (pgn & 0x3FF00) | dest
    return PRIORITY_6 | pgn << 8 | source


def dm1_payload(dtcs: Sequence[tuple[int, int, int]], *, mil: int = 0, amber: int = 0) -> bytes:
    """DM1 bytes for ``(spn, fmi, occurrences)`` codes (conversion method 4)."""
    lamps = bytes([(mil & 3) << 6 | (amber & 3) << 2, 0xFF])
    body = b"".join(
        bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) & 0x7) << 5 | (fmi & 0x1F), oc & 0x7F])
        for spn, fmi, oc in dtcs
    ) or bytes(4)
    payload = lamps + body
    return payload + b"\xff" * (8 - len(payload)) if len(payload) < 8 else payload


def dm1_frames(
    dtcs: Sequence[tuple[int, int, int]], *, source: int, t: float, mil: int = 0, amber: int = 0
) -> list[can.Message]:
    """The frames a DM1 broadcast takes: one frame, or TP.CM BAM + TP.DT packets 50 ms apart."""
    payload = dm1_payload(dtcs, mil=mil, amber=amber)
    if len(payload) <= 8:
        return [can.Message(timestamp=t, arbitration_id=_id(PGN_DM1, source), data=payload)]
    packets = (len(payload) + 6) // 7
    cm = bytes(
        [
            0x20,
            len(payload) & 0xFF,
            len(payload) >> 8,
            packets,
            0xFF,
            PGN_DM1 & 0xFF,
            (PGN_DM1 >> 8) & 0xFF,
            PGN_DM1 >> 16,
        ]
    )
    frames = [can.Message(timestamp=t, arbitration_id=_id(PGN_TP_CM, source), data=cm)]
    for n in range(packets):
        chunk = payload[n * 7 : n * 7 + 7]
        data = bytes([n + 1]) + chunk + b"\xff" * (7 - len(chunk))
        frames.append(
            can.Message(
                timestamp=t + 0.05 * (n + 1), arbitration_id=_id(PGN_TP_DT, source), data=data
            )
        )
    return frames
