"""Frames to signal values: DBC lookup, decoding, and counting what could not be decoded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import can
from cantools.database.can import Message, Signal
from cantools.database.namedsignalvalue import NamedSignalValue
from cantools.database.utils import create_encode_decode_formats, decode_data
from cantools.typechecking import Formats

from canvoy.agent.database import EXTENDED, Index
from canvoy.agent.multiframe import Transport, is_transport_key, wants_isotp

Value = float | int | str


def decode_payload(
    message: Message, data: bytes, *, truncated: bool = False
) -> dict[str, Value] | None:
    """Decode ``data`` as ``message``: scaled numbers, value-table names as strings.

    ``truncated``: a reassembled payload shorter than its message decodes the signals that fit.
    Returns None when the payload cannot be decoded (too short, a bad multiplexer value).
    """
    try:
        result = message.decode(
            data, decode_choices=True, scaling=True, allow_truncated=truncated, allow_excess=True
        )
    except Exception:  # cantools raises DecodeError, KeyError, ValueError, struct errors
        return None
    if not isinstance(result, dict):
        return None  # a container message; canvoy does not unpack containers
    return _plain(result)


def _plain(raw: dict[str, Any]) -> dict[str, Value]:
    """Value-table entries as their names (strings), in place."""
    for name, value in raw.items():
        if isinstance(value, NamedSignalValue):
            raw[name] = str(value.name)
    return raw


@dataclass(frozen=True, slots=True)
class Selection:
    """Some signals of one message, with cantools' codec for just their bits."""

    signals: tuple[Signal, ...]
    formats: Formats


def select(message: Message, signals: Sequence[Signal]) -> Selection:
    """A :class:`Selection` of ``signals`` (signals of ``message``, none multiplexed)."""
    return Selection(tuple(signals), create_encode_decode_formats(signals, message.length))


def decode_selection(
    message: Message, selection: Selection, data: bytes
) -> dict[str, Value] | None:
    """Decode only ``selection``'s signals of a whole payload, as :func:`decode_payload` would.

    cantools' ``decode_data`` is what ``Message.decode`` runs on each group of signals; given
    fewer signals it unpacks and scales fewer (one signal of forty costs a tenth of the whole
    message). Returns None when the payload cannot be decoded.
    """
    try:
        # decode_choices, scaling, allow_truncated, allow_excess: positional (keywords cost a
        # quarter of a one-signal decode)
        raw = decode_data(
            data, message.length, selection.signals, selection.formats, True, True, False, True
        )
    except Exception:  # cantools raises DecodeError, KeyError, ValueError, struct errors
        return None
    return _plain(raw)


@dataclass(slots=True)
class DecodeStats:
    """What a decoder saw; everything that was not decoded is counted, never raised."""

    frames: int = 0
    decoded: int = 0
    repeated: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    malformed: int = 0
    transport: int = 0  # frames that were pieces of multi-frame messages
    reassembled: int = 0  # multi-frame messages rebuilt from them (decoded or not)
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
    """Decodes every frame the databases know; an identical payload is decoded only once.

    Multi-frame messages (J1939 transport, ISO-TP) are decoded when their last frame arrives.
    """

    def __init__(self, index: Index) -> None:
        self.index = index
        self.stats = DecodeStats()
        self.transport = Transport()
        self._messages: dict[int, Message | None] = {}
        self._transport_keys: dict[int, bool] = {}
        self._last: dict[int, tuple[bytes, dict[str, Value]]] = {}

    def decode(self, msg: can.Message) -> Decoded | None:
        """Decode one frame, or count it as error, remote, unknown or malformed and return None."""
        stats = self.stats
        key = data_frame_key(msg, stats)
        if key is None:
            return None
        transport = self._transport_keys.get(key)
        if transport is None:
            transport = self._transport_keys[key] = is_transport_key(self.index, key)
        if transport:
            stats.transport += 1
            done = self.transport.j1939(msg)
            if done is None:
                return None
            stats.reassembled += 1
            key, payload = done
            return self._decode(msg, key, payload, multi=True)
        return self._decode(msg, key, bytes(msg.data), multi=False)

    def _decode(self, msg: can.Message, key: int, data: bytes, *, multi: bool) -> Decoded | None:
        stats = self.stats
        try:
            message = self._messages[key]
        except KeyError:
            message = self._messages[key] = self.index.lookup(key)
        if message is None:
            stats.unknown[key] += 1
            return None
        if not multi and len(data) < message.length and wants_isotp(message.length, msg):
            stats.transport += 1
            payloads = self.transport.isotp(msg)
            if not payloads:
                return None
            stats.reassembled += len(payloads)
            data, multi = payloads[-1], True
        last = self._last.get(key)
        if last is not None and last[0] == data:
            stats.repeated += 1
            signals = last[1]
        else:
            decoded = decode_payload(message, data, truncated=multi)
            if decoded is None:
                stats.malformed += 1
                return None
            signals = decoded
            self._last[key] = (data, signals)
        stats.decoded += 1
        frame_id = key & ~EXTENDED
        extended = bool(key & EXTENDED)
        return Decoded(
            t=msg.timestamp,
            channel=str(msg.channel) if msg.channel is not None else "",
            frame_id=frame_id,
            is_extended=extended,
            message=message.name,
            source=frame_id & 0xFF if self.index.j1939 and extended else None,
            signals=signals,
        )
