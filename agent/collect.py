"""The agent's hot path: frame -> changed collected bits? -> decode -> policy -> samples.

Multi-frame messages (J1939 transport, ISO-TP payloads the databases define) are rebuilt first
and then take the same path as a frame, with the same policy rules.

A frame is decoded only when the bits of the signals the policy collects differ from the last
frame of the same id (and multiplexer value), or when a signal of it is due (heartbeat, or a
change held back by ``min_interval_s``). Counters and checksums are outside the mask, so they
alone never force a decode.

In a message without multiplexer, only the signals whose bits changed, or which are due, are
decoded and put through their rules: an unchanged signal's value and rules give the same answer
as at the last decode, so the other signals of a forty-signal message cost nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import can
from cantools.database.can import Message, Signal

from canvoy.agent.database import EXTENDED, Index, signal_bits
from canvoy.agent.decode import (
    DecodeStats,
    Selection,
    Value,
    data_frame_key,
    decode_payload,
    decode_selection,
    select,
)
from canvoy.agent.faults import FaultLog
from canvoy.agent.multiframe import Transport, is_transport_key, wants_isotp
from canvoy.agent.policy import Policy, SignalPlan

log = logging.getLogger(__name__)
INF = math.inf
# Codecs kept per message for the sets of signals that change together; beyond: full decodes.
MAX_SELECTIONS = 64
MAX_CHANGES = 256  # patterns of changed bits remembered per message


class Sample(NamedTuple):
    """One reported value: recorded time, ``bus/message/signal[@SA]``, value."""

    t: float
    key: str
    value: Value


def tee(
    emit: Callable[[Sample], None], observe: Callable[[Sample], None]
) -> Callable[[Sample], None]:
    """An emit function that passes each sample on, then lets ``observe`` look at it."""

    def both(sample: Sample) -> None:
        emit(sample)
        observe(sample)

    return both


class _Gate:
    """Reporting state of one signal, with its rate flattened for the hot loop."""

    __slots__ = (
        "bits",
        "deadband",
        "decimals",
        "due",
        "heartbeat_s",
        "key",
        "last",
        "last_t",
        "min_interval_s",
        "name",
        "on_change",
        "pending",
        "signal",
    )

    def __init__(self, plan: SignalPlan, key: str, signal: Signal, bits: int) -> None:
        self.name = plan.name
        self.key = key
        self.signal = signal
        self.bits = bits  # the signal's bits in the frame, as in _Entry.mask
        self.on_change = plan.rate.on_change
        self.deadband = plan.rate.deadband
        self.min_interval_s = plan.rate.min_interval_s
        self.heartbeat_s = plan.rate.heartbeat_s
        self.decimals = plan.decimals
        self.last: Value | None = None
        self.last_t = -INF
        self.pending = False
        self.due = INF  # when this signal next needs a decode even if its bits are unchanged

    def settle(self) -> None:
        """Recompute ``due`` after the state changed."""
        if self.pending or not self.on_change:
            self.due = self.last_t + self.min_interval_s
        elif self.heartbeat_s > 0:
            self.due = self.last_t + self.heartbeat_s
        else:
            self.due = INF


@dataclass(slots=True)
class _Entry:
    """Everything about one arbitration id, resolved once."""

    message: Message | None
    length: int = 0
    mask: int = 0
    mux_mask: int = 0
    gates: list[_Gate] = field(default_factory=list)
    due: float = INF  # nothing is due until a signal has been reported
    # per multiplexer value: [last masked bits, time at which some signal is due]
    states: dict[int, list[float]] = field(default_factory=dict)
    # No multiplexer: a frame decodes only its changed or due signals, with these codecs.
    selective: bool = False
    selections: dict[tuple[_Gate, ...], Selection] = field(default_factory=dict)
    # changed bits -> the signals they belong to, and their codec (when nothing else is due)
    changes: dict[int, tuple[tuple[_Gate, ...], Selection]] = field(default_factory=dict)


_UNKNOWN = _Entry(message=None)
_TRANSPORT = _Entry(message=None)  # a J1939 TP.CM / TP.DT frame: a piece of another message


class Collector(can.Listener):
    """A python-can Listener that turns one bus's frames into policy-approved samples."""

    def __init__(
        self,
        *,
        bus: str,
        index: Index,
        policy: Policy,
        emit: Callable[[Sample], None],
        on_unknown: Callable[[can.Message], None] | None = None,
    ) -> None:
        self.bus = bus
        self.index = index
        self.policy = policy
        self.emit = emit
        self.on_unknown = on_unknown
        self.stats = DecodeStats()
        self.transport = Transport()
        self.bus_errors = 0
        self.last_error: Exception | None = None
        self.faults = FaultLog(log, f"bus {bus}: a frame was skipped")
        self._entries: dict[int, _Entry] = {}

    def on_message_received(self, msg: can.Message) -> None:
        """Handle one frame; never raises: bad traffic is counted, and a failure in decoding,
        the policy, diagnostics or batching is counted and logged, and the frame skipped."""
        # One try around the whole hot path (free in Python 3.11) rather than a second call.
        try:
            stats = self.stats
            key = data_frame_key(msg, stats)
            if key is None:
                return
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = self._resolve(key)
            if entry.message is None:
                if entry is _TRANSPORT:
                    stats.transport += 1
                    done = self.transport.j1939(msg)
                    if done is not None:
                        stats.reassembled += 1
                        self._payload(msg, done[0], done[1])
                    return
                stats.unknown[key] += 1
                if self.on_unknown is not None:
                    self.on_unknown(msg)
                return
            data = msg.data
            if len(data) < entry.length:
                if wants_isotp(entry.length, msg):
                    stats.transport += 1
                    for payload in self.transport.isotp(msg):
                        stats.reassembled += 1
                        self._take(entry, msg.timestamp, payload, truncated=True)
                    return
                stats.malformed += 1
                return
            self._take(entry, msg.timestamp, data, truncated=False)

        except Exception as exc:  # one frame never stops a bus
            self.faults.record(f"{type(exc).__name__}: {exc}")

    def _payload(self, msg: can.Message, key: int, payload: bytes) -> None:
        """A reassembled J1939 message: looked up and collected like a frame of its PGN."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = self._resolve(key)
        if entry.message is None:
            self.stats.unknown[key] += 1
            if self.on_unknown is not None:
                self.on_unknown(msg)
            return
        self._take(entry, msg.timestamp, payload, truncated=True)

    def _take(self, entry: _Entry, t: float, data: bytes | bytearray, *, truncated: bool) -> None:
        """The policy's rules for one message's payload: changed bits, due signals, decode."""
        stats = self.stats
        if not entry.mask:
            stats.repeated += 1  # nothing collected from this message
            return
        length = entry.length
        head: bytes | bytearray = data if len(data) == length else data[:length]
        if truncated:  # a reassembled payload may be shorter than its message: pad it
            head = bytes(head).ljust(length, b"\0")
        bits = int.from_bytes(head, "big") & entry.mask
        mux = bits & entry.mux_mask
        state = entry.states.get(mux)
        if state is not None:
            if state[0] == bits and t < state[1]:
                stats.repeated += 1
                return
            if entry.selective and not truncated and self._changed(entry, state, t, data, bits):
                return
        assert entry.message is not None
        signals = decode_payload(entry.message, bytes(data), truncated=truncated)
        if signals is None:
            stats.malformed += 1
            return
        stats.decoded += 1
        due = self._gate(entry, signals, t, entry.gates)
        if state is None:
            entry.states[mux] = [bits, due]
        else:
            state[0], state[1] = bits, due

    def _changed(
        self, entry: _Entry, state: list[float], t: float, data: bytes | bytearray, bits: int
    ) -> bool:
        """Decode and gate only the signals whose bits changed or which are due; False when
        this frame needs the whole message decoded instead."""
        diff = int(state[0]) ^ bits
        if t < state[1]:  # nothing due: which signals changed follows from the changed bits
            found = entry.changes.get(diff)
            if found is None:
                found = self._select(entry, tuple([g for g in entry.gates if diff & g.bits]))
                if found is None:
                    return False
                if len(entry.changes) < MAX_CHANGES:
                    entry.changes[diff] = found
        else:
            found = self._select(
                entry, tuple([g for g in entry.gates if diff & g.bits or t >= g.due])
            )
            if found is None:
                return False
        gates, selection = found
        assert entry.message is not None
        signals = decode_selection(entry.message, selection, bytes(data))
        if signals is None:
            return False  # the whole decode says why (malformed), as for any frame
        self.stats.decoded += 1
        state[0], state[1] = bits, self._gate(entry, signals, t, gates)
        return True

    @staticmethod
    def _select(
        entry: _Entry, gates: tuple[_Gate, ...]
    ) -> tuple[tuple[_Gate, ...], Selection] | None:
        """The codec for ``gates``' signals, made once; None beyond MAX_SELECTIONS."""
        selection = entry.selections.get(gates)
        if selection is None:
            if len(entry.selections) >= MAX_SELECTIONS:
                return None
            assert entry.message is not None
            selection = select(entry.message, [g.signal for g in gates])
            entry.selections[gates] = selection
        return gates, selection

    def on_error(self, exc: Exception) -> None:
        """Called by can.Notifier when the bus fails; the bus supervisor reopens it."""
        self.bus_errors += 1
        self.last_error = exc

    def _gate(
        self, entry: _Entry, signals: dict[str, Value], t: float, gates: Sequence[_Gate]
    ) -> float:
        """Apply ``gates``' rate rules; emit samples; return when this message next needs
        decoding."""
        due = entry.due  # the earliest due of all the message's gates, kept as they change
        stale = False
        for g in gates:
            value = signals.get(g.name)
            if value is None:
                continue  # a signal of another multiplexer page
            if g.decimals is not None and value.__class__ is float:
                value = round(value, g.decimals)
            last = g.last
            if value == last:
                changed = False
            elif last is None or g.deadband <= 0 or value.__class__ is str or last.__class__ is str:
                changed = True
            else:
                changed = abs(value - last) > g.deadband  # type: ignore[operator]
            since = t - g.last_t
            if changed or not g.on_change:
                report = since >= g.min_interval_s
            else:
                report = g.heartbeat_s > 0 and since >= g.heartbeat_s
            if report:
                self.emit(Sample(t, g.key, value))
                g.last, g.last_t, g.pending = value, t, False
            elif changed != g.pending and g.on_change:
                g.pending = changed  # a change held back by min_interval_s, or one undone
            else:
                continue
            was = g.due
            g.settle()
            if g.due <= due:
                due = g.due
            elif was <= due:
                stale = True  # the earliest gate moved later: look at them all
        if stale:
            due = min([g.due for g in entry.gates])  # a list is faster than a generator
        entry.due = due
        return due

    def _resolve(self, key: int) -> _Entry:
        if is_transport_key(self.index, key):
            return _TRANSPORT
        message = self.index.lookup(key)
        if message is None:
            return _UNKNOWN
        suffix = f"@{key & 0xFF:02X}" if self.index.j1939 and key & EXTENDED else ""
        entry = _Entry(message=message, length=message.length)
        for signal in message.signals:
            plan = self.policy.plan(f"{self.bus}/{message.name}/{signal.name}")
            bits = signal_bits(signal, message.length)
            if signal.is_multiplexer:
                entry.mux_mask |= bits
                entry.mask |= bits
            if plan is not None:
                entry.mask |= bits
                entry.gates.append(_Gate(plan, plan.path + suffix, signal, bits))
        if not entry.gates:
            entry.mask = 0
        entry.selective = not message.is_multiplexed() and not message.is_container
        return entry
