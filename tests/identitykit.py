"""Certificates made by hand with the fleet CA's key, for tests an honest PKI cannot set up."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canvoy.certs import pki


def handmade(
    root: Path,
    folder: Path,
    *,
    attributes: list[tuple[x509.ObjectIdentifier, str]],
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[Path, Path]:
    """Sign a client certificate with the CA of ``root`` for any subject and dates; write
    ``cert.pem`` and ``key.pem`` into ``folder`` and return their paths."""
    ca_key, ca_cert = pki.load_ca(root)
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.write_key(key_path, key, force=True)
    return cert_path, key_path


def fleet_subject(name: str, kind: str) -> list[tuple[x509.ObjectIdentifier, str]]:
    """The attributes of a fleet identity's subject, in the PKI's order."""
    return [
        (NameOID.ORGANIZATION_NAME, pki.ORGANIZATION),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
        (NameOID.COMMON_NAME, name),
    ]


def expired_copy(root: Path, kind: pki.IdentityKind, name: str, into: Path) -> None:
    """Overwrite ``into`` with a certificate for ``kind``/``name``'s own key that expired a
    day ago (as a certificate left in a car for too long would be)."""
    key = serialization.load_pem_private_key(
        (pki.identity_dir(root, kind, name) / "key.pem").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    cert_path, _key = handmade(
        root,
        into.parent / "expired-tmp",
        attributes=fleet_subject(name, kind),
        key=key,
        not_before=now - dt.timedelta(days=400),
        not_after=now - dt.timedelta(days=1),
    )
    cert_path.replace(into)


def dated_crl(root: Path, *, last_update: dt.datetime, next_update: dt.datetime) -> None:
    """Rewrite the CRL of ``root`` (keeping its entries) with the given dates."""
    ca_key, ca_cert = pki.load_ca(root)
    current = pki.load_crl(root)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(last_update)
        .next_update(next_update)
    )
    for entry in current or []:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    pki.crl_path(root).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
