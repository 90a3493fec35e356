"""Confirmations: what a bridge builds parses back exactly; hostile payloads fail one clear way."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.wire.confirm import (
    MAX_BOOTS,
    MAX_CONFIRM_BYTES,
    MAX_RANGES,
    confirmation_payloads,
    parse_confirmation,
    ranges_of,
)
from canvoy.wire.envelope import MAX_SEQ
from canvoy.wire.errors import EnvelopeError, MalformedError, OversizeError

BOOT = "ab" * 16
seqs = st.sets(st.integers(0, MAX_SEQ), max_size=300) | st.builds(
    lambda start, n, step: set(range(start, start + n * step, step)),
    st.integers(0, 2**40),
    st.integers(1, 5000),
    st.integers(1, 3),
)


@settings(max_examples=60, deadline=None)
@given(
    confirmed=st.dictionaries(st.binary(min_size=16, max_size=16), seqs, max_size=40),
    keys=st.lists(st.text(max_size=40), max_size=400),
)
def test_what_a_bridge_builds_parses_back_to_exactly_the_same_envelopes(
    confirmed: dict[bytes, set[int]], keys: list[str]
) -> None:
    payloads = confirmation_payloads(keys, confirmed, 1767225600000)
    back: dict[bytes, set[int]] = {}
    named: list[str] = []
    for payload in payloads:
        assert len(payload) <= MAX_CONFIRM_BYTES
        got = parse_confirmation(payload)
        assert got.delivered_ms == 1767225600000
        named += got.keys
        for boot, first, last in got.ranges:
            back.setdefault(boot, set()).update(range(first, last + 1))
    assert named == keys
    assert back == {boot: s for boot, s in confirmed.items() if s}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_are_a_confirmation_or_one_envelope_error(payload: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        parse_confirmation(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
fields = st.sampled_from(["keys", "delivered_ms", "confirmed", "boot", "ranges"])


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(fields, json_values, max_size=3)
    | st.builds(
        lambda ranges: {"delivered_ms": 1, "confirmed": [{"boot": BOOT, "ranges": ranges}]},
        json_values,
    )
)
def test_any_json_shape_is_checked_field_by_field(content: object) -> None:
    try:
        got = parse_confirmation(json.dumps(content).encode())
    except EnvelopeError:
        return
    for boot, first, last in got.ranges:
        assert len(boot) == 16 and 0 <= first <= last <= MAX_SEQ


def _payload(**content: object) -> bytes:
    return json.dumps({"keys": [], "delivered_ms": 1, **content}).encode()


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"x" * (MAX_CONFIRM_BYTES + 1), OversizeError, "bytes >"),
        (b"[" * 50_000 + b"]" * 50_000, OversizeError, "bytes >"),
        (b"[" * 30_000 + b"]" * 30_000, MalformedError, "not a JSON object|not JSON"),
        (b'{"delivered_ms": 1' + b"9" * 5000 + b"}", MalformedError, "not JSON"),
        (_payload(delivered_ms=True), MalformedError, "delivered_ms"),
        (_payload(delivered_ms=-1), MalformedError, "delivered_ms"),
        (_payload(keys="car-1:00:1"), MalformedError, "keys"),
        (_payload(keys=["x" * 200]), MalformedError, "at most 128"),
        (_payload(confirmed=[{"boot": "AB" * 16, "ranges": []}]), MalformedError, "hex"),
        (_payload(confirmed=[{"boot": BOOT, "ranges": [[5, 4]]}]), MalformedError, "before"),
        (_payload(confirmed=[{"boot": BOOT, "ranges": [[1.0, 4]]}]), MalformedError, "integer"),
        (
            _payload(confirmed=[{"boot": BOOT, "ranges": [[0, 2**63]]}]),
            MalformedError,
            r"\.\.2\^63-1",
        ),
        (_payload(confirmed=[{"boot": BOOT, "ranges": [[1, 2, 3]]}]), MalformedError, "first"),
        (
            _payload(confirmed=[{"boot": BOOT, "ranges": []}] * (MAX_BOOTS + 1)),
            MalformedError,
            "at most 16",
        ),
        (
            _payload(confirmed=[{"boot": BOOT, "ranges": [[1, 1]] * (MAX_RANGES + 1)}]),
            MalformedError,
            "at most 2048",
        ),
    ],
)
def test_hostile_confirmations_name_the_problem(
    payload: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_confirmation(payload)


def test_an_events_receipt_of_the_old_form_still_parses() -> None:
    got = parse_confirmation(b'{"keys": ["car-1:' + BOOT.encode() + b':7"], "delivered_ms": 5}')
    assert (got.keys, got.ranges) == ((f"car-1:{BOOT}:7",), ())


def test_ranges_are_compact() -> None:
    assert ranges_of([7, 1, 2, 3, 3, 9, 8]) == [(1, 3), (7, 9)]
    (payload,) = confirmation_payloads([], {bytes(16): range(1, 100_001)}, 1)
    assert len(payload) < 150  # a hundred thousand envelopes in one range
