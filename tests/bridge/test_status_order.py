"""Which status of a device is its newest: a connection's last will beats its birth and its
heartbeats although it was signed first; the next connection's birth beats the will."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvoy.bridge.state import BridgeState
from canvoy.bridge.verify import Verifier, status_order
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire import body
from canvoy.wire.envelope import Envelope, sign
from canvoy.wire.errors import DuplicateError
from canvoy.wire.keys import DeviceKeys

NOW_MS = int(time.time() * 1000)


def _verifier(pki_dir: Path) -> Verifier:
    return Verifier(DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes()))


def _status(
    car: VirtualDevice, state: body.State, created_ms: int, connected_ms: int | None, lost: bool
) -> bytes:
    status = body.Status(
        state=state,
        agent="test",
        policy=car.policy,
        cert_pem=car.cert_pem,
        connected_ms=connected_ms,
        heartbeat_s=60,
        lost=lost,
    )
    encoding, data = body.encode(body.status_content(status))
    envelope = Envelope(
        device=car.device,
        boot=car.boot,
        seq=0,
        kind="status",
        created_ms=created_ms,
        encoding=encoding,
        body=data,
    )
    return sign(envelope, car.key)


def test_a_will_signed_at_connect_is_newer_than_the_birth_and_heartbeats(pki_dir: Path) -> None:
    verifier = _verifier(pki_dir)
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    start = NOW_MS - 600_000
    will = _status(car, "offline", start, start, lost=True)  # made first, published last
    verifier.check(car.topic("status"), _status(car, "online", start + 1, start, lost=False))
    verifier.check(car.topic("status"), _status(car, "online", start + 60_000, start, lost=False))
    verifier.check(car.topic("status"), will)  # the connection died: this is its newest word
    with pytest.raises(DuplicateError):
        verifier.check(car.topic("status"), will)  # the same will again changes nothing
    later = start + 120_000
    verifier.check(car.topic("status"), _status(car, "online", later, later, lost=False))
    with pytest.raises(DuplicateError):  # an old connection's will after a new birth
        verifier.check(car.topic("status"), will)


def test_the_order_survives_a_restart_through_the_state_file(pki_dir: Path, tmp_path: Path) -> None:
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    start = NOW_MS - 600_000
    birth = _status(car, "online", start + 1, start, lost=False)
    will = _status(car, "offline", start, start, lost=True)
    first = _verifier(pki_dir)
    state = BridgeState(tmp_path / "b.state.sqlite", 1000)
    for payload in (birth, will):
        verified = first.check(car.topic("status"), payload)
        assert isinstance(verified.parsed, body.Status)
        order = status_order(verified.signed.envelope.created_ms, verified.parsed)
        state.commit(statuses=[(car.device, order)])
    state.close()
    again = BridgeState(tmp_path / "b.state.sqlite", 1000)
    second = _verifier(pki_dir)
    second.restore_statuses(again.statuses())
    for payload in (birth, will):
        with pytest.raises(DuplicateError):
            second.check(car.topic("status"), payload)
    again.close()


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 5)), min_size=1, max_size=12
    )
)
def test_verifier_and_state_file_keep_the_same_newest_in_any_arrival_order(
    pki_dir: Path, tmp_path_factory: pytest.TempPathFactory, arrivals: list[tuple[int, bool, int]]
) -> None:
    """Each status is taken exactly when it is newer than every one taken before, and the state
    file keeps the newest even when an older one is written after it."""
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    verifier = _verifier(pki_dir)
    state = BridgeState(tmp_path_factory.mktemp("s") / "b.state.sqlite", 1000)
    base = NOW_MS - 3_600_000
    newest: tuple[int, int, int] | None = None
    for connection, offline, step in arrivals:
        connected, created = base + connection * 60_000, base + connection * 60_000 + step
        state_name: body.State = "offline" if offline else "online"
        payload = _status(car, state_name, created, connected, lost=offline)
        expected = (connected, int(offline), created)
        try:
            verified = verifier.check(car.topic("status"), payload)
        except DuplicateError:
            assert newest is not None and expected <= newest
            state.commit(statuses=[(car.device, expected)])  # an older one changes nothing
            continue
        assert newest is None or expected > newest
        assert isinstance(verified.parsed, body.Status)
        order = status_order(created, verified.parsed)
        assert order == expected
        newest = order
        state.commit(statuses=[(car.device, order)])
    assert state.statuses() == {car.device: newest}
    state.close()
