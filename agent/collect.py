"""The agent's hot path: frame -> changed collected bits? -> decode -> policy -> samples.

A frame is decoded only when the bits of the signals the policy collects differ from the last
frame of the same id (and multiplexer value), or when a signal of it is due (heartbeat, or a
change held back by ``min_interval_s``). Counters and checksums are outside the mask, so they
alone never force a decode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import can
from cantools.database.can import Message

from agent.database import EXTENDED, Index, signal_bits
from agent.decode import DecodeStats, Value, decode_payload
from agent.policy import Policy, SignalPlan

INF = math.inf


class Sample(NamedTuple):
    """One reported value: recorded time, ``bus/message/signal[@SA]``, value."""

    t: float
    key: str
    value: Value


@dataclass(slots=True)
class _Gate:
    """Reporting state of one signal."""

    plan: SignalPlan
    key: str
    last: Value | None = None
    last_t: float = -INF
    pending: bool = False


@dataclass(slots=True)
class _Entry:
    """Everything about one arbitration id, resolved once."""

    message: Message | None
    length: int = 0
    mask: int = 0
    mux_mask: int = 0
    gates: dict[str, _Gate] = field(default_factory=dict)
    # per multiplexer value: [last masked bits, time at which some signal is due]
    states: dict[int, list[float]] = field(default_factory=dict)


_UNKNOWN = _Entry(message=None)


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
        self.bus_errors = 0
        self.last_error: Exception | None = None
        self._entries: dict[int, _Entry] = {}

    def on_message_received(self, msg: can.Message) -> None:
        """Handle one frame; never raises for bad traffic (it is counted instead)."""
        stats = self.stats
        stats.frames += 1
        if msg.is_error_frame:
            stats.error_frames += 1
            return
        if msg.is_remote_frame:
            stats.remote_frames += 1
            return
        key = msg.arbitration_id | EXTENDED if msg.is_extended_id else msg.arbitration_id
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = self._resolve(key)
        if entry.message is None:
            stats.unknown[key] += 1
            if self.on_unknown is not None:
                self.on_unknown(msg)
            return
        data = msg.data
        if len(data) < entry.length:
            stats.malformed += 1
            return
        if not entry.mask:
            stats.repeated += 1  # nothing collected from this message
            return
        bits = int.from_bytes(data[: entry.length], "big") & entry.mask
        mux = bits & entry.mux_mask
        t = msg.timestamp
        state = entry.states.get(mux)
        if state is not None and state[0] == bits and t < state[1]:
            stats.repeated += 1
            return
        signals = decode_payload(entry.message, bytes(data))
        if signals is None:
            stats.malformed += 1
            return
        stats.decoded += 1
        due = self._gate(entry, signals, t)
        if state is None:
            entry.states[mux] = [bits, due]
        else:
            state[0], state[1] = bits, due

    def on_error(self, exc: Exception) -> None:
        """Called by can.Notifier when the bus fails; the bus supervisor reopens it."""
        self.bus_errors += 1
        self.last_error = exc

    def _gate(self, entry: _Entry, signals: dict[str, Value], t: float) -> float:
        """Apply rate rules; emit samples; return when this message next needs decoding."""
        due = INF
        emit = self.emit
        for name, decoded in signals.items():
            gate = entry.gates.get(name)
            if gate is None:
                continue
            rate = gate.plan.rate
            value = decoded
            if gate.plan.decimals is not None and isinstance(value, float):
                value = round(value, gate.plan.decimals)
            last = gate.last
            if last is None or not rate.on_change:
                changed = True
            elif isinstance(value, str) or isinstance(last, str):
                changed = value != last
            else:
                changed = abs(value - last) > rate.deadband
            since = t - gate.last_t
            if changed and since >= rate.min_interval_s:
                report = True
            elif changed:
                report = False
                gate.pending = True
            else:
                report = rate.heartbeat_s > 0 and since >= rate.heartbeat_s
                gate.pending = False
            if report:
                emit(Sample(t, gate.key, value))
                gate.last, gate.last_t, gate.pending = value, t, False
            if gate.pending or not rate.on_change:
                due = min(due, gate.last_t + rate.min_interval_s)
            if rate.heartbeat_s > 0:
                due = min(due, gate.last_t + rate.heartbeat_s)
        return due

    def _resolve(self, key: int) -> _Entry:
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
                entry.gates[signal.name] = _Gate(plan=plan, key=plan.path + suffix)
        if not entry.gates:
            entry.mask = 0
        return entry
