"""Verification, device keys, the replay window, records and the quarantine chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from canvoy.bridge.quarantine import Quarantine, verify_chain
from canvoy.bridge.records import records
from canvoy.bridge.verify import ReplayWindow, Verifier
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire import body
from canvoy.wire.errors import (
    DuplicateError,
    IdentityMismatchError,
    MalformedError,
    ReplayError,
    UnknownDeviceError,
)
from canvoy.wire.keys import DeviceKeys


def _verifier(pki_dir: Path) -> Verifier:
    crl = pki.crl_path(pki_dir)
    return Verifier(
        DeviceKeys(
            pki.ca_cert_path(pki_dir).read_bytes(), crl.read_bytes() if crl.exists() else None
        )
    )


def test_a_birth_teaches_the_key_and_telemetry_verifies(pki_dir: Path) -> None:
    verifier = _verifier(pki_dir)
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    with pytest.raises(UnknownDeviceError) as unknown:
        verifier.check(car.topic("telemetry"), car.telemetry({"pt/A/b": [(1.0, 2.5)]}))
    assert unknown.value.reason == "unknown_device"
    verifier.check(car.topic("status"), car.birth())
    verified = verifier.check(car.topic("telemetry"), car.telemetry({"pt/A/b": [(1.0, 2.5)]}))
    [record] = records(verified)
    assert record.data["series"] == {"pt/A/b": {"t_ms": [1000], "v": [2.5]}}
    assert record.key == verified.key == f"car-1:{car.boot.hex()}:2"


def test_a_birth_with_another_devices_certificate_is_refused(pki_dir: Path) -> None:
    verifier = _verifier(pki_dir)
    car1 = VirtualDevice.from_pki(pki_dir, "car-1")
    car2 = VirtualDevice.from_pki(pki_dir, "car-2")
    thief = VirtualDevice("car-1", car2.key, car2.cert_pem)  # car-2's cert on car-1's topic
    with pytest.raises(IdentityMismatchError, match="CN 'car-2'"):
        verifier.check(car1.topic("status"), thief.birth())


def test_an_operator_certificate_is_not_a_device(pki_dir: Path) -> None:
    keys = DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes())
    cert = (pki.identity_dir(pki_dir, "operator", "ops") / "cert.pem").read_bytes()
    with pytest.raises(IdentityMismatchError, match="not a device"):
        keys.learn("ops", cert)


def test_a_certificate_of_another_ca_is_unknown(tmp_path: Path, pki_dir: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    pki.issue(other, "device", "car-1")
    keys = DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes())
    cert = (pki.identity_dir(other, "device", "car-1") / "cert.pem").read_bytes()
    with pytest.raises(UnknownDeviceError, match="not issued by the fleet CA"):
        keys.learn("car-1", cert)


def test_a_revoked_device_is_refused_with_its_reason(pki_dir: Path) -> None:
    pki.revoke(pki_dir, "car-2")
    verifier = _verifier(pki_dir)
    car2 = VirtualDevice.from_pki(pki_dir, "car-2")
    for payload, topic in ((car2.birth(), "status"), (car2.events([]), "events")):
        with pytest.raises(UnknownDeviceError) as refused:
            verifier.check(car2.topic(topic), payload)  # type: ignore[arg-type]
        assert refused.value.reason == "revoked"


def test_replay_window_admits_late_redeliveries_but_not_old_replays() -> None:
    window = ReplayWindow(size=1000)
    boot = b"\x01" * 16
    for seq in (5, 7, 3000):
        window.admit("car-1", boot, seq)
    window.admit("car-1", boot, 2500)  # late, but inside the window: another instance's redelivery
    with pytest.raises(DuplicateError):
        window.admit("car-1", boot, 7)
    with pytest.raises(ReplayError):
        window.admit("car-1", boot, 1999)
    window.admit("car-1", b"\x02" * 16, 1)  # a new boot has its own window
    window.forget("car-1", boot, 2500)
    window.admit("car-1", boot, 2500)


def test_the_quarantine_chain_shows_a_removed_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    quarantine = Quarantine(path)
    for i in range(3):
        quarantine.add("canvoy/v1/car-1/telemetry", "malformed", f"case {i}", b"x%d" % i)
    assert verify_chain(path) == 3
    Quarantine(path).add("t", "replay", "after a restart", b"y")  # continues the chain
    assert verify_chain(path) == 4
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"q\.jsonl:2: hash chain broken"):
        verify_chain(path)
    assert json.loads(lines[0])["payload_sha256"]


scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=10))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.lists(st.tuples(st.integers(0, 2**42), scalars), min_size=1, max_size=20),
        max_size=10,
    )
)
def test_telemetry_bodies_round_trip(series: dict[str, list[tuple[int, object]]]) -> None:
    columns = {k: ([t for t, _ in v], [x for _, x in v]) for k, v in series.items()}
    encoding, data = body.encode(body.telemetry_content("p", columns))  # type: ignore[arg-type]
    parsed = body.parse_telemetry(body.decode(encoding, data))
    assert {s.key: (list(s.times_ms), list(s.values)) for s in parsed.series} == columns


@pytest.mark.parametrize(
    "content",
    [
        {"policy": "p", "t0": 0, "series": [["k", [1, 2], [1.0]]]},
        {"policy": "p", "t0": 0, "series": [["k", [1.5], [1.0]]]},
        {"policy": "p", "t0": 0, "series": [["k", [1], [[1]]]]},
        {"policy": "p", "t0": "0", "series": []},
        {"t0": 0, "series": []},
    ],
)
def test_malformed_telemetry_bodies_are_refused(content: dict[str, object]) -> None:
    with pytest.raises(MalformedError):
        body.parse_telemetry(content)


def test_a_decompression_bomb_is_refused() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (body.MAX_BODY_BYTES + 10))
    with pytest.raises(MalformedError, match="decompress"):
        body.decode("zstd", bomb)


def test_worker_processes_verify_like_the_main_process(pki_dir: Path) -> None:
    from canvoy.bridge.workers import VerifyPool, public_bytes

    car = VirtualDevice.from_pki(pki_dir, "car-1")
    key = public_bytes(_verifier(pki_dir).keys.learn("car-1", car.cert_pem).key)
    good = car.telemetry({"pt/A/b": [(1.0, 2.5), (2.0, 3.5)]})
    forged = VirtualDevice("car-1", ec.generate_private_key(ec.SECP256R1()), car.cert_pem)
    topic = car.topic("telemetry")
    pool = VerifyPool(2)
    try:
        ok, bad, junk = pool.verify(
            [
                (topic, good, (key,)),
                (topic, forged.telemetry({"pt/A/b": [(1.0, 9.9)]}), (key,)),
                (topic, b"\x00", (key,)),
            ]
        )
    finally:
        pool.close()
    assert ok.verified is not None and ok.verified.key == f"car-1:{car.boot.hex()}:1"
    assert json.loads(ok.records[0].json())["series"]["pt/A/b"]["v"] == [2.5, 3.5]
    assert (bad.reason, junk.reason) == ("bad_signature", "malformed")
