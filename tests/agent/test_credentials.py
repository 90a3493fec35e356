"""The agent's certificate check before each connection: why not, and healing on replacement."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.credentials import CertificateProblemError, Credentials
from canvoy.certs import enrol, pki
from canvoy.wire.tls import TlsFiles
from tests.identitykit import expired_copy, fleet_subject, handmade

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def device(tmp_path: Path) -> tuple[Path, Credentials]:
    """A PKI with car-1 and the device's own copy of its files (as in a vehicle)."""
    root = tmp_path / "pki"
    pki.init_ca(root)
    pki.issue(root, "device", "car-1")
    car = tmp_path / "car"
    car.mkdir()
    for name in ("cert.pem", "key.pem"):
        shutil.copy(root / "device" / "car-1" / name, car / name)
    shutil.copy(root / "ca.pem", car / "ca.pem")
    key = serialization.load_pem_private_key((car / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    files = TlsFiles(ca=car / "ca.pem", cert=car / "cert.pem", key=car / "key.pem")
    return root, Credentials("car-1", files, key, (car / "cert.pem").read_text())


def test_a_valid_certificate_loads(device: tuple[Path, Credentials]) -> None:
    _root, creds = device
    loaded = creds.load()
    assert loaded.valid_at(NOW)
    assert creds.load() is loaded  # files unchanged: not read again


def test_expired_then_renewed_on_disk_heals(device: tuple[Path, Credentials]) -> None:
    root, creds = device
    expired_copy(root, "device", "car-1", creds.files.cert)
    with pytest.raises(CertificateProblemError, match=r"expired on .*canvoy certs renew device"):
        creds.load()
    renewed = enrol.renew(root, "device", "car-1", days=365)
    shutil.copyfile(renewed.cert_path, creds.files.cert)
    loaded = creds.load()
    assert loaded.not_after == renewed.not_after
    assert creds.cert_pem == renewed.cert_path.read_text()


def test_not_yet_valid_waits_for_the_clock(device: tuple[Path, Credentials]) -> None:
    _root, creds = device
    early = NOW - dt.timedelta(days=1)
    with pytest.raises(CertificateProblemError, match=r"not valid before.*check the clock"):
        creds.load(now=early)
    assert creds.load(now=NOW).valid_at(NOW)  # same files: the clock alone heals it


def test_a_certificate_for_another_key_or_device_is_refused(
    device: tuple[Path, Credentials], tmp_path: Path
) -> None:
    root, creds = device
    other_key, _ = handmade(root, tmp_path / "other", attributes=fleet_subject("car-1", "device"))
    shutil.copyfile(other_key, creds.files.cert)
    with pytest.raises(CertificateProblemError, match="not for the key this agent signs with"):
        creds.load()
    key = serialization.load_pem_private_key(creds.files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    wrong, _ = handmade(
        root, tmp_path / "wrong", attributes=fleet_subject("car-2", "device"), key=key
    )
    shutil.copyfile(wrong, creds.files.cert)
    with pytest.raises(CertificateProblemError, match="is for 'car-2', not this device"):
        creds.load()


def test_missing_or_garbage_certificate_is_a_reason_not_a_crash(
    device: tuple[Path, Credentials],
) -> None:
    _root, creds = device
    creds.files.cert.write_bytes(b"-----BEGIN CERT")  # a copy cut short
    with pytest.raises(CertificateProblemError, match="not a PEM certificate"):
        creds.load()
    creds.files.cert.unlink()
    with pytest.raises(CertificateProblemError, match="cannot be read"):
        creds.load()
