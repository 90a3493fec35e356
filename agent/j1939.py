"""J1939 diagnostics: transport-protocol reassembly (BAM and RTS/CTS) and DM1 active DTCs.

A passive listener: it never sends. TP.CM announces a multi-packet message (size, packet count,
PGN); TP.DT frames carry it 7 bytes at a time, numbered from 1. DM1 (PGN 65226) carries the lamp
status and the active DTCs (SPN, FMI, occurrence count) per J1939-73, conversion method 4.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import can

from canvoy.agent.database import pgn_of
from canvoy.agent.episodes import EpisodeTracker, Fault, Transition
from canvoy.wire.events import DtcEvent

log = logging.getLogger(__name__)

PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
PGN_DM1 = 0xFECA
CM_RTS, CM_BAM, CM_ABORT = 0x10, 0x20, 0xFF
TIMEOUT_S = 0.75  # J1939-21 T1: the most between two packets of a BAM
LAMPS = ("protect", "amber_warning", "red_stop", "mil")  # byte 0, bits 1-0 .. 7-6


@dataclass(slots=True)
class _Session:
    pgn: int
    size: int
    packets: int
    started: float
    last: float
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class TransportStats:
    """What the reassembler saw."""

    completed: int = 0
    timed_out: int = 0
    aborted: int = 0
    stray: int = 0  # TP.DT with no announcement


class Reassembler:
    """Rebuilds multi-packet J1939 messages from TP.CM / TP.DT frames, per (source, dest)."""

    def __init__(self) -> None:
        self.stats = TransportStats()
        self._sessions: dict[tuple[int, int], _Session] = {}

    def feed(self, msg: can.Message) -> tuple[int, int, bytes] | None:
        """Take one frame; return ``(pgn, source address, payload)`` when a message completes."""
        if not msg.is_extended_id or msg.is_error_frame or len(msg.data) < 8:
            return None
        pgn = pgn_of(msg.arbitration_id)
        source, dest = msg.arbitration_id & 0xFF, (msg.arbitration_id >> 8) & 0xFF
        data = bytes(msg.data)
        t = msg.timestamp
        if pgn == PGN_TP_CM:
            control = data[0]
            if control in (CM_BAM, CM_RTS):
                size = data[1] | data[2] << 8
                packets = data[3]
                announced = data[5] | data[6] << 8 | data[7] << 16
                self._sessions[(source, dest)] = _Session(announced, size, packets, t, t)
            elif control == CM_ABORT and self._sessions.pop((source, dest), None) is not None:
                self.stats.aborted += 1
            return None
        if pgn != PGN_TP_DT:
            return None
        session = self._sessions.get((source, dest))
        if session is None:
            self.stats.stray += 1
            return None
        if t - session.last > TIMEOUT_S:
            del self._sessions[(source, dest)]
            self.stats.timed_out += 1
            return None
        session.last = t
        session.chunks[data[0]] = data[1:]
        if len(session.chunks) < session.packets:
            return None
        del self._sessions[(source, dest)]
        payload = b"".join(session.chunks.get(i, b"") for i in range(1, session.packets + 1))
        if len(payload) < session.size:
            self.stats.aborted += 1
            return None
        self.stats.completed += 1
        return session.pgn, source, payload[: session.size]


@dataclass(frozen=True, slots=True)
class Dm1Code:
    """One active J1939 DTC."""

    spn: int
    fmi: int
    occurrences: int

    @property
    def code(self) -> str:
        """``SPN110-FMI0``: how fleets write J1939 DTCs."""
        return f"SPN{self.spn}-FMI{self.fmi}"


def parse_dm1(payload: bytes) -> tuple[dict[str, int], list[Dm1Code]]:
    """Lamp states and active DTCs of a DM1 payload (single frame or reassembled)."""
    lamps = {name: (payload[0] >> (2 * i)) & 3 for i, name in enumerate(LAMPS)}
    codes = []
    for i in range(2, len(payload) - 3, 4):
        b = payload[i : i + 4]
        spn = b[0] | b[1] << 8 | (b[2] >> 5) << 16
        fmi = b[2] & 0x1F
        if (spn == 0 and fmi == 0) or spn == 0x7FFFF:
            continue  # "no active DTC" filler
        codes.append(Dm1Code(spn, fmi, b[3] & 0x7F))
    return lamps, codes


class Dm1Watcher(can.Listener):
    """Listens to a J1939 bus; reports every sender's DM1 to the episode tracker.

    One episode per SPN and sender: a new FMI or occurrence count is an ``update``.
    """

    def __init__(self, bus: str, episodes: EpisodeTracker) -> None:
        self.bus = bus
        self.reassembler = Reassembler()
        self.episodes = episodes

    def on_message_received(self, msg: can.Message) -> None:
        """One frame: a single-frame DM1, or a TP frame that may complete a DM1."""
        if not msg.is_extended_id or msg.is_error_frame:
            return
        pgn = pgn_of(msg.arbitration_id)
        if pgn == PGN_DM1 and len(msg.data) >= 6:
            self._dm1(msg.timestamp, msg.arbitration_id & 0xFF, bytes(msg.data))
        elif pgn in (PGN_TP_CM, PGN_TP_DT):
            done = self.reassembler.feed(msg)
            if done is not None and done[0] == PGN_DM1:
                self._dm1(msg.timestamp, done[1], done[2])

    def _dm1(self, t: float, source: int, payload: bytes) -> None:
        lamps, codes = parse_dm1(payload)
        active = {f"SPN{c.spn}": Fault(c.code, (c.fmi, c.occurrences)) for c in codes}
        build = partial(self._event, t, lamps)
        self.episodes.report("j1939", f"{self.bus}/DM1@{source:02X}", active, build, int(t * 1000))

    def _event(self, t: float, lamps: dict[str, int], step: Transition) -> DtcEvent:
        e = step.episode
        fmi, occurrences = e.detail if len(e.detail) == 2 else (None, None)
        return DtcEvent(
            t_ms=int(t * 1000),
            code=e.code,
            state=step.state,
            source="j1939",
            signal=e.scope,
            episode=e.id,
            spn=int(e.key[3:]),
            fmi=fmi,
            occurrences=occurrences,
            lamps=lamps,
        )
