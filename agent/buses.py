"""Bus entries of the agent config, and the driver filters built from their databases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from canvoy.agent.database import EXTENDED, Index
from canvoy.agent.j1939 import PGN_DM1, PGN_TP_CM, PGN_TP_DT
from canvoy.agent.obd import ObdConfig
from canvoy.agent.source import LOG_SUFFIXES, parse_speed
from canvoy.errors import ConfigError
from canvoy.wire.ids import ID_PATTERN

J1939_PGN_MASK = 0x03FFFF00  # priority and source address left out
J1939_PDU1_MASK = 0x03FF0000  # ... and the destination address too


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """One frame source: a live python-can interface, or a log file to replay.

    Live: ``interface`` + ``channel`` (e.g. socketcan/can0, pcan/PCAN_USBBUS1, virtual/test).
    Replay: ``replay`` (a log file in any python-can format) with ``speed`` and ``loop``.
    """

    name: str
    databases: tuple[Path, ...]
    interface: str | None = None
    channel: str | None = None
    bitrate: int | None = None
    fd: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    j1939: bool | None = None  # None: detect from the database
    filters: Literal["auto", "none"] = "auto"
    replay: Path | None = None
    speed: str | float = "max"  # max, realtime or xN (N alone is xN too)
    loop: bool = False
    obd: ObdConfig | None = None  # poll OBD-II over ISO-TP on this (live) bus

    def __post_init__(self) -> None:
        if ID_PATTERN.fullmatch(self.name) is None:
            raise ConfigError(f"bus name {self.name!r} is invalid: use 1-64 of [A-Za-z0-9_-]")
        if not self.databases:
            raise ConfigError(f"bus {self.name!r}: list at least one file under 'databases'")
        live = self.interface is not None or self.channel is not None
        if live == (self.replay is not None):
            raise ConfigError(
                f"bus {self.name!r}: give either 'interface' and 'channel' (a live bus) "
                "or 'replay' (a log file), not both and not neither"
            )
        if live and (self.interface is None or self.channel is None):
            raise ConfigError(f"bus {self.name!r}: a live bus needs both 'interface' and 'channel'")
        if self.replay is not None and self.replay.suffix.lower() not in LOG_SUFFIXES:
            raise ConfigError(
                f"bus {self.name!r}: replay file {str(self.replay)!r} has an unknown format: use "
                + ", ".join(LOG_SUFFIXES)
            )
        try:
            parse_speed(self.speed)
        except ValueError as exc:
            raise ConfigError(f"bus {self.name!r}: {exc}") from exc


def driver_filters(index: Index) -> list[dict[str, int | bool]]:
    """``can_filters`` that pass only the ids the databases know (PGNs for J1939, with TP and DM1).

    SocketCAN applies them in the kernel, so unneeded frames never reach Python; other
    python-can interfaces apply them in the driver or in python-can itself.
    """
    filters: list[dict[str, int | bool]] = []
    for key in index.by_key:
        extended = bool(key & EXTENDED)
        filters.append(
            {
                "can_id": key & ~EXTENDED,
                "can_mask": 0x1FFFFFFF if extended else 0x7FF,
                "extended": extended,
            }
        )
    # On J1939, the transport protocol carries the PGNs longer than a frame, and DM1 the
    # diagnostics: they pass whatever the databases define.
    pgns = [*index.by_pgn, PGN_TP_CM, PGN_TP_DT, PGN_DM1] if index.j1939 else []
    for pgn in dict.fromkeys(pgns):
        pdu1 = (pgn >> 8) & 0xFF < 240
        filters.append(
            {
                "can_id": pgn << 8,
                "can_mask": J1939_PDU1_MASK if pdu1 else J1939_PGN_MASK,
                "extended": True,
            }
        )
    return filters
