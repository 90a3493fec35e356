"""The chaos run's own parts: reading what the agent sealed from its outbox."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.wire.envelope import Envelope, sign
from tests.chaos import Plan, envelope_key


def test_envelope_key_reads_the_head_of_a_payload() -> None:
    envelope = Envelope(
        device="car-9",
        boot=bytes(range(16)),
        seq=2**40 + 3,
        kind="telemetry",
        created_ms=1,
        encoding="zstd",
        body=b"x" * 70_000,
    )
    payload = sign(envelope, ec.generate_private_key(ec.SECP256R1()))
    assert envelope_key(payload[:160]) == envelope.key
    with pytest.raises(ValueError, match="not a"):
        envelope_key(b"\x93abc")


@pytest.mark.parametrize("payload", [b"", b"\x92\x01", b"\x92\xc4\x05\x98\x01"])
def test_envelope_key_refuses_what_is_not_an_envelope_head(payload: bytes) -> None:
    with pytest.raises(ValueError):
        envelope_key(payload)


def test_plan_refuses_more_kills_than_cycles() -> None:
    with pytest.raises(ValueError, match=r"broker_kills must be 0\.\.agent_kills - blackouts"):
        Plan(seed=1, agent_kills=3, broker_kills=4)
