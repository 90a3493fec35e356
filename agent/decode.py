"""Frames to signal values: DBC lookup, decoding, and counting what could not be decoded."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import can
from cantools.database.can import Message
from cantools.database.namedsignalvalue import NamedSignalValue

from canvoy.agent.database import EXTENDED, Index

Value = float | int | str


def decode_payload(message: Message, data: bytes) -> dict[str, Value] | None:
    """Decode ``data`` as ``message``: scaled numbers, value-table names as strings.

    Returns None when the payload cannot be decoded (too short, a bad multiplexer value).
    """
    try:
        result = message.decode(
            data, decode_choices=True, scaling=True, allow_truncated=False, allow_excess=True
        )
    except Exception:  # cantools raises DecodeError, KeyError, ValueError, struct errors
        return None
    if not isinstance(result, dict):
        return None  # a container message; canvoy does not unpack containers
    raw: dict[str, Any] = result
    for name, value in raw.items():
        if isinstance(value, NamedSignalValue):
            raw[name] = str(value.name)
    return raw


@dataclass(slots=True)
class DecodeStats:
    """What a decoder saw; everything that was not decoded is counted, never raised."""

    frames: int = 0
    decoded: int = 0
    repeated: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    malformed: int = 0
    unknown: Counter[int] = field(default_factory=Counter)

    @property
    def unknown_frames(self) -> int:
        """Frames whose id no database knows."""
        return sum(self.unknown.values())


def data_frame_key(msg: can.Message, stats: DecodeStats) -> int | None:
    """Count ``msg``; return its frame key, or None for an error or remote frame (counted)."""
    stats.frames += 1
    if msg.is_error_frame:
        stats.error_frames += 1
        return None
    if msg.is_remote_frame:
        stats.remote_frames += 1
        return None
    return msg.arbitration_id | EXTENDED if msg.is_extended_id else msg.arbitration_id


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded frame."""

    t: float
    channel: str
    frame_id: int
    is_extended: bool
    message: str
    source: int | None
    signals: dict[str, Value]


class Decoder:
    """Decodes every frame the databases know; an identical payload is decoded only once."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.stats = DecodeStats()
        self._messages: dict[int, Message | None] = {}
        self._last: dict[int, tuple[bytes, dict[str, Value]]] = {}

    def decode(self, msg: can.Message) -> Decoded | None:
        """Decode one frame, or count it as error, remote, unknown or malformed and return None."""
        stats = self.stats
        key = data_frame_key(msg, stats)
        if key is None:
            return None
        try:
            message = self._messages[key]
        except KeyError:
            message = self._messages[key] = self.index.lookup(key)
        if message is None:
            stats.unknown[key] += 1
            return None
        data = bytes(msg.data)
        last = self._last.get(key)
        if last is not None and last[0] == data:
            stats.repeated += 1
            signals = last[1]
        else:
            decoded = decode_payload(message, data)
            if decoded is None:
                stats.malformed += 1
                return None
            signals = decoded
            self._last[key] = (data, signals)
        stats.decoded += 1
        return Decoded(
            t=msg.timestamp,
            channel=str(msg.channel) if msg.channel is not None else "",
            frame_id=msg.arbitration_id,
            is_extended=msg.is_extended_id,
            message=message.name,
            source=msg.arbitration_id & 0xFF if self.index.j1939 and msg.is_extended_id else None,
            signals=signals,
        )
