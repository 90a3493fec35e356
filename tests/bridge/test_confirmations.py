"""A bridge's confirmations: per device, at most every interval, ranges per boot, events named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvoy.bridge.confirm import Confirmations
from canvoy.wire.confirm import parse_confirmation
from canvoy.wire.envelope import parse_key

A, B = "aa" * 16, "bb" * 16


class Clock:
    def __init__(self) -> None:
        self.s = 100.0

    def __call__(self) -> float:
        return self.s


def _seqs(payloads: list[tuple[str, bytes]]) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for device, payload in payloads:
        for boot, first, last in parse_confirmation(payload).ranges:
            out.setdefault(device, set()).update((boot.hex(), s) for s in range(first, last + 1))
    return out


def test_batched_per_device_at_most_every_interval() -> None:
    clock = Clock()
    c = Confirmations(2.0, clock)
    c.add(f"car-1:{A}:1")
    assert _seqs(c.due()) == {"car-1": {(A, 1)}}  # a quiet device hears at once
    for seq in (2, 3, 5):
        c.add(f"car-1:{A}:{seq}")
    c.add(f"car-1:{B}:1", event=True)
    c.add(f"car-2:{A}:9")
    assert _seqs(c.due()) == {"car-2": {(A, 9)}}  # car-1 had one less than 2 s ago
    clock.s += 2.0
    due = c.due()
    assert _seqs(due) == {"car-1": {(A, 2), (A, 3), (A, 5), (B, 1)}}
    (payload,) = [p for _d, p in due]
    assert parse_confirmation(payload).keys == (f"car-1:{B}:1",)
    assert len(c) == 0 and c.due() == []


@pytest.mark.parametrize(
    "key",
    ["car-1:00:1", f"car 1:{A}:1", f"car-1:{A}:x", f"car-1:{A}:{2**63}", f"car-1:{A}:0", "a:b"],
)
def test_keys_that_name_no_outbox_row_are_ignored(key: str) -> None:
    c = Confirmations(1.0, Clock())
    c.add(key)
    assert c.due() == []


def test_parse_key() -> None:
    assert parse_key(f"car-1:{A}:7") == ("car-1", bytes.fromhex(A), 7)
    assert parse_key(f"car-1:{'zz' * 16}:7") is None
    assert parse_key(f"car-1:{A}:²") is None  # isdigit() takes it, int() would not
    assert parse_key(f"car-1:{A}:{2**63}") is None
    assert parse_key(f"car-1:{A.upper()}:7") is None
    assert parse_key(f"car-1:{A}:7:3") is None  # a record key, not an envelope's
    assert parse_key(f"car-1:{A}:7:3", record=True) == ("car-1", bytes.fromhex(A), 7)
    assert parse_key(f"car 1:{A}:7") is None


@given(st.text(max_size=80))
def test_parse_key_never_raises(text: str) -> None:
    parsed = parse_key(text, record=True)
    assert parsed is None or 0 <= parsed[2] <= 2**63 - 1
