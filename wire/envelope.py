"""Envelope v1: the signed msgpack unit every agent message travels in.

Layout (see docs/PROTOCOL.md):
    payload = msgpack [signed: bin, signature: bin(64)]
    signed  = msgpack [version, device, boot, seq, kind, created_ms, encoding, body]
The signature is ECDSA P-256 / SHA-256 over the exact bytes of ``signed``, as raw r||s.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from canvoy.wire.errors import (
    EnvelopeError,
    MalformedError,
    OversizeError,
    SignatureError,
    UnsupportedVersionError,
)
from canvoy.wire.ids import ID_PATTERN
from canvoy.wire.topics import KINDS, Kind

VERSION = 1
MAX_PAYLOAD_BYTES = 128 * 1024
BOOT_ID_BYTES = 16
SIGNATURE_BYTES = 64
MAX_SEQ = 2**63 - 1  # seq and created_ms: what every database downstream can store
Encoding = Literal["none", "zstd"]
ENCODINGS: tuple[Encoding, ...] = ("none", "zstd")
_FIELDS = 8
_SIGNING = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFYING = ec.ECDSA(hashes.SHA256())


# device:boot:seq[:index]: the boot in lowercase hex as ``Envelope.key`` writes it, numbers in
# ASCII digits (str.isdigit() also takes "²", which int() refuses)
_KEY = re.compile(r"([^:]+):([0-9a-f]{32}):([0-9]{1,19})(:[0-9]+)?")


def parse_key(key: str, *, record: bool = False) -> tuple[str, bytes, int] | None:
    """An envelope's idempotency key ``device:boot:seq`` -> its parts; None for anything else.

    With ``record`` a record key ``device:boot:seq:index`` (an event of the envelope) is taken
    too and names its envelope. Safe on hostile text: never raises.
    """
    parts = _KEY.fullmatch(key)
    if parts is None or (parts[4] is not None and not record):
        return None
    device, boot, seq = parts[1], parts[2], int(parts[3])
    if ID_PATTERN.fullmatch(device) is None or seq > MAX_SEQ:
        return None
    return device, bytes.fromhex(boot), seq


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message from one device; ``body`` is opaque bytes in ``encoding``."""

    device: str
    boot: bytes
    seq: int
    kind: Kind
    created_ms: int
    encoding: Encoding
    body: bytes
    version: int = VERSION

    def __post_init__(self) -> None:
        if ID_PATTERN.fullmatch(self.device) is None:
            raise MalformedError(f"envelope device id {self.device!r} is invalid")
        if len(self.boot) != BOOT_ID_BYTES:
            raise MalformedError(f"boot id must be {BOOT_ID_BYTES} bytes, not {len(self.boot)}")
        for name, value in (("sequence", self.seq), ("created_ms", self.created_ms)):
            if not 0 <= value <= MAX_SEQ:
                raise MalformedError(f"{name} {value} is outside 0..2^63-1")
        if self.kind not in KINDS:
            raise MalformedError(f"kind {self.kind!r} is unknown: use one of {KINDS}")
        if self.encoding not in ENCODINGS:
            raise MalformedError(f"encoding {self.encoding!r} is unknown: use one of {ENCODINGS}")
        if not 0 <= self.created_ms <= MAX_SEQ:
            raise MalformedError(f"created_ms {self.created_ms} is out of range")

    @property
    def key(self) -> str:
        """The idempotency key ``device:boot:seq`` that names this envelope everywhere."""
        return f"{self.device}:{self.boot.hex()}:{self.seq}"


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """An unpacked payload: the envelope, the exact bytes that were signed, and the signature."""

    envelope: Envelope
    signed: bytes
    signature: bytes

    @property
    def digest(self) -> str:
        """SHA-256 of the signed bytes, hex: a stable name for the evidence."""
        return hashlib.sha256(self.signed).hexdigest()


def pack(envelope: Envelope) -> bytes:
    """The canonical bytes of ``envelope`` that the signature covers."""
    e = envelope
    fields = [e.version, e.device, e.boot, e.seq, e.kind, e.created_ms, e.encoding, e.body]
    return bytes(msgpack.packb(fields, use_bin_type=True))


def sign(envelope: Envelope, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign ``envelope`` with the device key and return the whole payload.

    Raises:
        OversizeError: the payload would exceed MAX_PAYLOAD_BYTES.
    """
    signed = pack(envelope)
    r, s = decode_dss_signature(key.sign(signed, _SIGNING))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    payload = bytes(msgpack.packb([signed, signature], use_bin_type=True))
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise OversizeError(
            f"envelope of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}: close batches sooner"
        )
    return payload


def _unpackb(data: bytes, max_array: int) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            max_array_len=max_array,
            max_map_len=0,
            max_ext_len=0,
            max_str_len=256,
            max_bin_len=MAX_PAYLOAD_BYTES,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, ...
        raise MalformedError(f"payload is not valid msgpack for envelope v1: {exc}") from exc


def unpack(payload: bytes) -> SignedEnvelope:
    """Parse a payload, bounded, without trusting it; the signature is not checked here.

    Raises:
        OversizeError: the payload exceeds MAX_PAYLOAD_BYTES.
        MalformedError: the structure or a field type is wrong.
        UnsupportedVersionError: the version is not 1.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise OversizeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    outer = _unpackb(payload, 2)
    if not (isinstance(outer, list) and len(outer) == 2):
        raise MalformedError("payload must be a msgpack array [signed, signature]")
    signed, signature = outer
    if not (isinstance(signed, bytes) and isinstance(signature, bytes)):
        raise MalformedError("payload must hold two msgpack bin values")
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedError(f"signature must be {SIGNATURE_BYTES} bytes, not {len(signature)}")
    fields = _unpackb(signed, _FIELDS)
    if not isinstance(fields, list) or not fields:
        raise MalformedError("signed part must be a msgpack array")
    if fields[0] != VERSION or type(fields[0]) is not int:
        raise UnsupportedVersionError(
            f"envelope version {fields[0]!r} is not supported: this bridge speaks {VERSION}"
        )
    if len(fields) != _FIELDS:
        raise MalformedError(f"envelope v1 has {_FIELDS} fields, not {len(fields)}")
    version, device, boot, seq, kind, created_ms, encoding, body = fields
    types = (int, str, bytes, int, str, int, str, bytes)
    for name, value, want in zip(
        ("version", "device", "boot", "seq", "kind", "created_ms", "encoding", "body"),
        fields,
        types,
        strict=True,
    ):
        if type(value) is not want:
            raise MalformedError(
                f"field {name} must be {want.__name__}, not {type(value).__name__}"
            )
    envelope = Envelope(
        version=version,
        device=device,
        boot=boot,
        seq=seq,
        kind=kind,
        created_ms=created_ms,
        encoding=encoding,
        body=body,
    )
    return SignedEnvelope(envelope, signed, signature)


def verify(signed: SignedEnvelope, key: ec.EllipticCurvePublicKey) -> Envelope:
    """Check the signature of ``signed`` with the device's public key.

    Raises:
        SignatureError: the signature does not verify.
    """
    sig = signed.signature
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, signed.signed, _VERIFYING)
    except InvalidSignature as exc:
        raise SignatureError(
            f"signature of {signed.envelope.key} does not verify with the device's key"
        ) from exc
    return signed.envelope


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "VERSION",
    "Envelope",
    "EnvelopeError",
    "SignedEnvelope",
    "pack",
    "sign",
    "unpack",
    "verify",
]
