"""Load CAN databases and index their messages by frame id, or by J1939 PGN."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cantools
from cantools import j1939 as _j1939
from cantools.database.can import Database, Message, Signal

from canvoy.errors import DecodeError

EXTENDED = 1 << 29  # key bit that keeps an extended id apart from a standard one
# Rolling counters and checksums change every frame; they are not collected unless asked for.
INTEGRITY_PATTERNS = ("*counter*", "*checksum*", "*crc*", "*alive*", "*_cnt", "*_chks*")


def pgn_of(frame_id: int) -> int:
    """The J1939 PGN of a 29-bit id (PDU1 destination masked), via cantools."""
    return int(_j1939.pgn_from_frame_id(frame_id))  # type: ignore[no-untyped-call]


def frame_key(arbitration_id: int, is_extended: bool) -> int:
    """One integer per (id, frame format) so 0x100 standard and 0x100 extended differ."""
    return arbitration_id | EXTENDED if is_extended else arbitration_id


def load_databases(paths: Sequence[Path]) -> list[Database]:
    """Load DBC, KCD, SYM or ARXML files with cantools.

    Raises:
        DecodeError: a file is missing or cannot be parsed; the message names it.
    """
    loaded = []
    for path in paths:
        if not Path(path).is_file():
            raise DecodeError(
                f"database {str(path)!r} does not exist"
                " (canvoy's own: 'canvoy dbc list', then 'canvoy dbc copy NAME')"
            )
        try:
            db = cantools.database.load_file(str(path), strict=False)
        except Exception as exc:  # cantools raises many parser-specific types
            raise DecodeError(f"cannot read database {str(path)!r}: {exc}") from exc
        if not isinstance(db, Database):
            raise DecodeError(f"{str(path)!r} is not a CAN database (it is {type(db).__name__})")
        loaded.append(db)
    return loaded


def is_j1939(db: Database) -> bool:
    """True when the database says it is J1939 (ProtocolType or VFrameFormat attributes)."""
    attr = db.dbc.attributes.get("ProtocolType") if db.dbc is not None else None
    if attr is not None and str(attr.value).upper() == "J1939":
        return True
    return any(m.protocol == "j1939" for m in db.messages)


def is_integrity_signal(name: str) -> bool:
    """True for rolling counters and checksums, which change on every frame."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, p) for p in INTEGRITY_PATTERNS)


def signal_bits(signal: Signal, length_bytes: int) -> int:
    """The bits ``signal`` occupies, as a mask over ``int.from_bytes(data, 'big')``."""
    mask = bytearray(length_bytes)
    pos = signal.start
    for _ in range(signal.length):
        byte, bit = divmod(pos, 8)
        if byte < length_bytes:
            mask[byte] |= 1 << bit
        if signal.byte_order == "little_endian":
            pos += 1
        else:  # Motorola: walk from MSB down the DBC sawtooth numbering
            pos = pos + 15 if bit == 0 else pos - 1
    return int.from_bytes(mask, "big")


@dataclass(frozen=True, slots=True)
class Index:
    """Messages of one bus's databases, by frame key and (for J1939) by PGN."""

    by_key: dict[int, Message]
    by_pgn: dict[int, Message]
    j1939: bool

    def lookup(self, key: int) -> Message | None:
        """The message for a frame key, or None for an id the databases do not know."""
        found = self.by_key.get(key)
        if found is None and self.j1939 and key & EXTENDED:
            found = self.by_pgn.get(pgn_of(key & ~EXTENDED))
        return found


def build_index(databases: Iterable[Database], *, j1939: bool | None = None) -> Index:
    """Index every message; J1939 matching is on when asked or when a database is J1939."""
    dbs = list(databases)
    use_j1939 = any(is_j1939(db) for db in dbs) if j1939 is None else j1939
    by_key: dict[int, Message] = {}
    by_pgn: dict[int, Message] = {}
    for db in dbs:
        for message in db.messages:
            by_key.setdefault(frame_key(message.frame_id, message.is_extended_frame), message)
            if use_j1939 and message.is_extended_frame:
                by_pgn.setdefault(pgn_of(message.frame_id), message)
    if use_j1939:
        # In J1939 the source address varies: match every extended frame by PGN only.
        by_key = {k: m for k, m in by_key.items() if not k & EXTENDED}
    return Index(by_key=by_key, by_pgn=by_pgn, j1939=use_j1939)
