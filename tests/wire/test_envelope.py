"""Envelope pack/sign/unpack/verify: round trips, tampering and hostile payloads."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.wire.envelope import MAX_PAYLOAD_BYTES, Envelope, pack, sign, unpack, verify
from canvoy.wire.errors import (
    EnvelopeError,
    MalformedError,
    OversizeError,
    SignatureError,
    UnsupportedVersionError,
)

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())

envelopes = st.builds(
    Envelope,
    device=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    boot=st.binary(min_size=16, max_size=16),
    seq=st.integers(0, 2**63 - 1),
    kind=st.sampled_from(["telemetry", "events", "status", "receipts"]),
    created_ms=st.integers(0, 2**63 - 1),
    encoding=st.sampled_from(["none", "zstd"]),
    body=st.binary(max_size=2048),
)


def _envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "device": "car-1",
        "boot": b"\x01" * 16,
        "seq": 7,
        "kind": "telemetry",
        "created_ms": 1_700_000_000_000,
        "encoding": "none",
        "body": b"body",
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    signed = unpack(sign(env, KEY))
    assert verify(signed, KEY.public_key()) == env


@settings(max_examples=300)
@given(envelopes, st.data())
def test_any_changed_byte_fails(env: Envelope, data: st.DataObject) -> None:
    payload = bytearray(sign(env, KEY))
    index = data.draw(st.integers(0, len(payload) - 1))
    payload[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EnvelopeError):
        verify(unpack(bytes(payload)), KEY.public_key())


def test_other_key_fails() -> None:
    with pytest.raises(SignatureError, match="car-1:"):
        verify(unpack(sign(_envelope(), KEY)), OTHER_KEY.public_key())


def test_signature_covers_the_received_bytes_not_a_re_encoding() -> None:
    # The same values with a non-canonical integer encoding are different bytes: they fail.
    env = _envelope(seq=1)
    signed = pack(env)
    sig = unpack(sign(env, KEY)).signature
    wide = signed.replace(b"\xc4\x10" + env.boot + b"\x01", b"\xc4\x10" + env.boot + b"\xcc\x01")
    assert wide != signed
    forged = msgpack.packb([wide, sig], use_bin_type=True)
    with pytest.raises(SignatureError):
        verify(unpack(forged), KEY.public_key())


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"", MalformedError, "msgpack"),
        (b"\xc1", MalformedError, "msgpack"),
        (msgpack.packb({"a": 1}), MalformedError, "msgpack"),
        (msgpack.packb([b"x"]), MalformedError, r"\[signed, signature\]"),
        (msgpack.packb(["x", b"y" * 64]), MalformedError, "bin"),
        (msgpack.packb([b"x", b"y" * 10]), MalformedError, "64 bytes"),
        (msgpack.packb([msgpack.packb([2, "car-1"]), b"s" * 64]), UnsupportedVersionError, "2"),
        (msgpack.packb([msgpack.packb(["1"]), b"s" * 64]), UnsupportedVersionError, "'1'"),
        (msgpack.packb([msgpack.packb([1, "car-1"]), b"s" * 64]), MalformedError, "8 fields"),
        (
            msgpack.packb(
                [msgpack.packb([1, "car-1", b"b" * 16, -1, "telemetry", 0, "none", b""]), b"s" * 64]
            ),
            MalformedError,
            "sequence",
        ),
        (
            msgpack.packb(
                [msgpack.packb([1, "car 1", b"b" * 16, 1, "telemetry", 0, "none", b""]), b"s" * 64]
            ),
            MalformedError,
            "device id",
        ),
        (
            msgpack.packb(
                [msgpack.packb([1, "car-1", b"b" * 16, 1, "gossip", 0, "none", b""]), b"s" * 64]
            ),
            MalformedError,
            "kind",
        ),
        (
            msgpack.packb(
                [msgpack.packb([1, "car-1", "b" * 16, 1, "telemetry", 0, "none", b""]), b"s" * 64]
            ),
            MalformedError,
            "boot must be bytes",
        ),
        (msgpack.packb([b"x", b"y" * 64]) + b"trailing", MalformedError, "msgpack"),
        (b"\x91" * 5000, MalformedError, "msgpack"),
        (b"\x00" * (MAX_PAYLOAD_BYTES + 1), OversizeError, "exceeds"),
    ],
)
def test_hostile_payloads_are_rejected_with_a_specific_error(
    payload: bytes, error: type[EnvelopeError], match: str
) -> None:
    with pytest.raises(error, match=match):
        unpack(payload)


def test_sign_refuses_an_oversize_envelope() -> None:
    with pytest.raises(OversizeError, match="close batches sooner"):
        sign(_envelope(body=b"x" * MAX_PAYLOAD_BYTES), KEY)


def test_invalid_fields_are_refused_at_construction() -> None:
    with pytest.raises(MalformedError, match="boot id"):
        _envelope(boot=b"short")
    with pytest.raises(MalformedError, match="encoding"):
        _envelope(encoding="gzip")


def test_idempotency_key_names_device_boot_and_sequence() -> None:
    assert _envelope().key == "car-1:" + "01" * 16 + ":7"
