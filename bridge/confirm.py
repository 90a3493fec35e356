"""Confirmations to devices: which of their envelopes this bridge has durably forwarded.

An envelope is confirmed once every sink routed for it has taken or dead-lettered its records
(at once when no sink is routed), and again whenever it arrives once more after that: a device
republishes what it has not seen confirmed, so a confirmation that was lost is sent again. They
are gathered per device and sent at most every ``confirm_interval_s`` as ranges of sequence
numbers per boot (``canvoy.wire.confirm``); events envelopes are also named by key, for the
device's service-desk view. Only the main thread uses this.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from canvoy.wire.confirm import confirmation_payloads
from canvoy.wire.envelope import parse_key


@dataclass(slots=True)
class _Pending:
    seqs: dict[bytes, set[int]] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)


class Confirmations:
    """Envelopes to confirm, per device, until their device's next confirmation is due."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._last: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(sum(map(len, p.seqs.values())) for p in self._pending.values())

    def add(self, key: str, *, event: bool = False) -> None:
        """Confirm the envelope ``key`` (``device:boot:seq``); name it if it is an event."""
        parts = parse_key(key)
        if parts is None:
            return
        device, boot, seq = parts
        if seq == 0:  # a status: outside the sequence, never in an outbox
            return
        pending = self._pending.setdefault(device, _Pending())
        pending.seqs.setdefault(boot, set()).add(seq)
        if event:
            pending.keys.append(key)

    def due(self) -> list[tuple[str, bytes]]:
        """(device, payload) for every device whose confirmation may go now; forgets them."""
        now = self._clock()
        out: list[tuple[str, bytes]] = []
        delivered_ms = int(time.time() * 1000)
        for device in list(self._pending):
            if now - self._last.get(device, -self.interval_s) < self.interval_s:
                continue
            pending = self._pending.pop(device)
            self._last[device] = now
            for payload in confirmation_payloads(pending.keys, pending.seqs, delivered_ms):
                out.append((device, payload))
        # Devices quiet for a while need no timestamp: their next one may go at once.
        for device in [d for d, t in self._last.items() if now - t >= self.interval_s]:
            if device not in self._pending:
                del self._last[device]
        return out
