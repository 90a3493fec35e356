"""The test vector printed in docs/PROTOCOL.md is what the code produces and accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.wire.envelope import Envelope, pack, sign, unpack, verify

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def _vector() -> dict[str, object]:
    text = PROTOCOL.read_text()
    match = re.search(r"<!-- vector:envelope-v1 -->\s*```json\n(.*?)```", text, re.S)
    assert match, "docs/PROTOCOL.md lost its envelope-v1 test vector"
    result: dict[str, object] = json.loads(match.group(1))
    return result


def test_vector_signs_to_the_documented_bytes() -> None:
    v = _vector()
    key = ec.derive_private_key(int(str(v["private_key_scalar"]), 16), ec.SECP256R1())
    fields = v["envelope"]
    assert isinstance(fields, dict)
    env = Envelope(
        device=fields["device"],
        boot=bytes.fromhex(fields["boot"]),
        seq=fields["seq"],
        kind=fields["kind"],
        created_ms=fields["created_ms"],
        encoding=fields["encoding"],
        body=bytes.fromhex(fields["body"]),
    )
    assert pack(env).hex() == v["signed"]
    assert sign(env, key).hex() == v["payload"]
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert public.hex() == v["public_key"]


def test_vector_payload_verifies_with_the_documented_public_key() -> None:
    v = _vector()
    public = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), bytes.fromhex(str(v["public_key"]))
    )
    signed = unpack(bytes.fromhex(str(v["payload"])))
    env = verify(signed, public)
    assert (env.device, env.seq, env.body) == ("car-7", 42, b"hello, bus")
    assert signed.signature.hex() == v["signature"]
