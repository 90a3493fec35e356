"""The fleet PKI on disk: what `canvoy certs` makes, refuses and lists."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canvoy.certs import pki
from canvoy.errors import ConfigError, PKIError
from canvoy.wire.errors import InvalidIdentityError
from canvoy.wire.tls import client_context


@pytest.fixture
def root(tmp_path: Path) -> Path:
    pki.init_ca(tmp_path / "pki")
    return tmp_path / "pki"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_p256_and_private_keys_are_0600(root: Path) -> None:
    ident = pki.issue(root, "device", "car-1")
    ca = _cert(pki.ca_cert_path(root))
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (pki.ca_key_path(root), ident.key_path):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_device_certificate_names_the_device(root: Path) -> None:
    ident = pki.issue(root, "device", "1HGCM82633A004352", days=30)
    cert = _cert(ident.cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "1HGCM82633A004352"
    assert (
        cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "device"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    cert.verify_directly_issued_by(_cert(pki.ca_cert_path(root)))
    assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30
    assert ident.cert_path == root / "device" / "1HGCM82633A004352" / "cert.pem"


def test_broker_certificate_carries_its_hosts(root: Path) -> None:
    ident = pki.issue(root, "broker", "broker", hosts=["localhost", "127.0.0.1"])
    san = _cert(ident.cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(PKIError, match="--host"):
        pki.issue(root, "broker", "other")


def test_nothing_is_overwritten_without_force(root: Path) -> None:
    first = pki.issue(root, "device", "car-1")
    key_bytes = first.key_path.read_bytes()
    with pytest.raises(PKIError, match="--force"):
        pki.issue(root, "device", "car-1")
    assert first.key_path.read_bytes() == key_bytes
    with pytest.raises(PKIError, match="--force"):
        pki.init_ca(root)
    again = pki.issue(root, "device", "car-1", force=True)
    assert again.key_path.read_bytes() != key_bytes


@pytest.mark.parametrize("name", ["car 7", "", "x" * 65, "../etc"])
def test_bad_names_are_refused_and_nothing_is_written(root: Path, name: str) -> None:
    with pytest.raises(InvalidIdentityError, match="invalid: use 1-64"):
        pki.issue(root, "device", name)
    assert pki.identities(root) == []


def test_issue_without_ca_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(PKIError, match="canvoy certs init"):
        pki.issue(tmp_path, "device", "car-1")


def test_revoke_updates_crl_and_listing(root: Path) -> None:
    pki.issue(root, "device", "car-1")
    pki.issue(root, "device", "car-2")
    revoked = pki.revoke(root, "car-2")
    crl = pki.load_crl(root)
    assert crl is not None
    assert [e.serial_number for e in crl] == [revoked.serial]
    assert crl.is_signature_valid(_cert(pki.ca_cert_path(root)).public_key())  # type: ignore[arg-type]
    listing = {i.name: i.revoked for i in pki.identities(root)}
    assert listing == {"car-1": False, "car-2": True}
    pki.revoke(root, "car-2")  # idempotent
    assert len(list(pki.load_crl(root) or [])) == 1


def test_a_second_kind_under_an_existing_name_is_refused(root: Path) -> None:
    pki.issue(root, "bridge", "bridge-1")
    for kind in ("device", "operator", "broker"):
        with pytest.raises(PKIError, match=r"'bridge-1' is already a bridge identity"):
            pki.issue(root, kind, "bridge-1", hosts=["localhost"], force=True)
    assert not (root / "device" / "bridge-1").exists()
    assert [(i.kind, i.name) for i in pki.identities(root)] == [("bridge", "bridge-1")]


def test_revoke_asks_for_kind_when_ambiguous(root: Path, tmp_path: Path) -> None:
    # A PKI from before names were unique across kinds: made here by moving a folder in.
    pki.issue(root, "device", "shared-name")
    other = tmp_path / "older"
    pki.init_ca(other)
    pki.issue(other, "operator", "shared-name")
    (root / "operator").mkdir()
    (other / "operator" / "shared-name").rename(root / "operator" / "shared-name")
    with pytest.raises(PKIError, match="--kind"):
        pki.revoke(root, "shared-name")
    assert pki.revoke(root, "shared-name", "operator").kind == "operator"
    with pytest.raises(PKIError, match="certs list"):
        pki.revoke(root, "nobody")


def test_client_context_refuses_missing_files(root: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        client_context(ca=pki.ca_cert_path(root), cert=root / "no.pem", key=root / "no-key.pem")
