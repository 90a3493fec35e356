"""Property tests: authentic envelopes (signed with a real device key) with arbitrary bodies go
through verification, record building, splitting and every sink's JSON encoding, and nothing
raises but an EnvelopeError; the pipeline turns each into an acknowledgement."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.pipeline import Pipeline
from canvoy.bridge.quarantine import Quarantine
from canvoy.bridge.records import records, split
from canvoy.bridge.verify import Verifier
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.transport.mqtt import Message
from canvoy.wire import body
from canvoy.wire.errors import EnvelopeError
from canvoy.wire.keys import DeviceKeys
from canvoy.wire.tls import TlsFiles

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6)
    ),
    max_leaves=40,
)
FIELDS = ["policy", "t0", "series", "events", "state", "agent", "cert", "outbox", "type", "t_ms"]
series = st.lists(
    st.tuples(
        st.text(max_size=8),
        st.lists(st.integers(-(2**40), 2**40) | scalars, max_size=20),
        st.lists(scalars, max_size=20),
    ).map(list),
    max_size=5,
)
events = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["dtc", "trigger", "agent", "x"]), "t_ms": st.integers(0, 2**41)},
        optional={"code": st.text(max_size=6), "state": values, "extra": values},
    ),
    max_size=5,
)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), values, max_size=6),
    st.fixed_dictionaries(
        {"policy": st.text(max_size=64), "t0": st.integers(-(2**40), 2**40), "series": series}
    ),
    st.fixed_dictionaries({"events": events}),
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, VirtualDevice]:
    root = tmp_path_factory.mktemp("pki")
    pki.init_ca(root)
    pki.issue(root, "device", "car-1")
    pki.issue(root, "bridge", "b1")
    return root, VirtualDevice.from_pki(root, "car-1")


def _packable(content: dict[str, Any]) -> bool:
    try:
        msgpack.packb(content, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=bodies, kind=st.sampled_from(["telemetry", "events", "status"]))
def test_authentic_bodies_raise_nothing_but_envelope_errors(
    fleet: tuple[Path, VirtualDevice], content: dict[str, Any], kind: str
) -> None:
    root, car = fleet
    if not _packable(content):
        return
    keys = DeviceKeys(pki.ca_cert_path(root).read_bytes())
    keys.learn("car-1", car.cert_pem)
    verifier = Verifier(keys)
    payload = car.seal(kind, content)  # type: ignore[arg-type]
    try:
        verified = verifier.check(car.topic(kind), payload)  # type: ignore[arg-type]
    except EnvelopeError:
        return
    for record in records(verified):
        assert isinstance(record.text, str)
        for part in split(record, 2048):
            assert isinstance(part.json(), str)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=bodies, kind=st.sampled_from(["telemetry", "events", "status"]))
def test_the_pipeline_acknowledges_every_message(
    fleet: tuple[Path, VirtualDevice],
    tmp_path_factory: pytest.TempPathFactory,
    content: dict[str, Any],
    kind: str,
) -> None:
    root, car = fleet
    if not _packable(content):
        return
    work = tmp_path_factory.mktemp("bridge")
    config = BridgeConfig(
        name="b1",
        tls=TlsFiles(ca=pki.ca_cert_path(root), cert=root / "x", key=root / "y"),
        quarantine=work / "q.jsonl",
        sinks={"files": {"type": "jsonl", "path": str(work / "o.jsonl")}},
        routes={"telemetry": ("files",), "events": ("files",), "tickets": ("files",)},
    )
    keys = DeviceKeys(pki.ca_cert_path(root).read_bytes())
    keys.learn("car-1", car.cert_pem)
    pipeline = Pipeline(config, Verifier(keys), Quarantine(config.quarantine), None, Counter())
    msg = Message(mid=1, topic=car.topic(kind).encode())  # type: ignore[arg-type]
    msg.payload = car.seal(kind, content)  # type: ignore[arg-type]
    msg.qos = 1
    batch = pipeline.process([(None, msg)])  # type: ignore[list-item]
    assert len(batch.acks) == 1 or pipeline.held


def test_a_body_nested_past_the_bound_is_malformed() -> None:
    deep: Any = 0
    for _ in range(body.MAX_DEPTH):
        deep = [deep]
    with pytest.raises(EnvelopeError, match="nests deeper"):
        body.check_depth({"x": deep})
    body.check_depth({"series": [["k", list(range(60_000)), [1.5] * 60_000]]})
