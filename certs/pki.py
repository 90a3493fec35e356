"""Make and read the fleet PKI on disk; the layout is described in certs/README.md."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canvoy.errors import PKIError
from canvoy.wire.ids import check_id
from canvoy.wire.tls import TlsFiles

IdentityKind = Literal["broker", "device", "bridge", "operator"]
KINDS: tuple[IdentityKind, ...] = get_args(IdentityKind)
CA_DAYS = 3650
DEFAULT_DAYS: dict[IdentityKind, int] = {
    "broker": 825,
    "device": 1825,
    "bridge": 825,
    "operator": 365,
}
CRL_DAYS = 365
ORGANIZATION = "canvoy fleet"


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """One issued identity as found on disk."""

    kind: IdentityKind
    name: str
    serial: int
    not_after: dt.datetime
    revoked: bool
    cert_path: Path
    key_path: Path


def ca_cert_path(root: Path) -> Path:
    """Where the CA certificate lives: what every client and the broker trust."""
    return root / "ca.pem"


def ca_key_path(root: Path) -> Path:
    """Where the CA private key lives (keep this directory off vehicles and brokers)."""
    return root / "ca" / "key.pem"


def crl_path(root: Path) -> Path:
    """Where the certificate revocation list lives."""
    return root / "crl.pem"


def identity_dir(root: Path, kind: IdentityKind, name: str) -> Path:
    """``DIR/<kind>/<name>``: holds ``key.pem`` and ``cert.pem``."""
    return root / kind / name


def tls_files(root: Path, kind: IdentityKind, name: str) -> TlsFiles:
    """The fleet CA and ``kind``/``name``'s certificate and key, for a TLS client context."""
    folder = identity_dir(root, kind, name)
    return TlsFiles(ca=ca_cert_path(root), cert=folder / "cert.pem", key=folder / "key.pem")


def require_identity(root: Path, kind: IdentityKind, name: str) -> Path:
    """The folder of ``kind``/``name``, after checking the CA, certificate and key are there.

    Raises:
        PKIError: a file is missing; the message says how to issue it.
    """
    folder = identity_dir(root, kind, name)
    for needed in (ca_cert_path(root), folder / "cert.pem", folder / "key.pem"):
        if not needed.exists():
            raise PKIError(
                f"{needed} does not exist: issue it with "
                f"'canvoy certs issue {kind} {name} --dir {root}'"
            )
    return folder


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool) -> None:
    if path.exists() and not force:
        raise PKIError(f"key {str(path)!r} already exists: use --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_public(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; an identity signs and agrees keys (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(root: Path, *, force: bool = False, days: int = CA_DAYS) -> Path:
    """Create the fleet root CA (and an empty CRL) under ``root``.

    Raises:
        PKIError: a CA already exists and ``force`` is false.
    """
    if ca_cert_path(root).exists() and not force:
        raise PKIError(
            f"a fleet CA already exists at {str(ca_cert_path(root))!r}: use --force to replace it "
            "(every certificate it issued stops working)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name("canvoy fleet root CA", "ca")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(ca_key_path(root), key, force=True)
    _write_public(ca_cert_path(root), cert.public_bytes(serialization.Encoding.PEM))
    _write_crl(root, key, cert, [])
    return ca_cert_path(root)


def load_ca(root: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the CA key and certificate.

    Raises:
        PKIError: there is no CA under ``root`` or it cannot be read.
    """
    if not ca_cert_path(root).is_file() or not ca_key_path(root).is_file():
        raise PKIError(f"no fleet CA in {str(root)!r}: run 'canvoy certs init --dir {root}' first")
    key = serialization.load_pem_private_key(ca_key_path(root).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"CA key {str(ca_key_path(root))!r} is not an EC key")
    return key, x509.load_pem_x509_certificate(ca_cert_path(root).read_bytes())


def _sans(kind: IdentityKind, name: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"urn:canvoy:{kind}:{name}")]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(
    root: Path,
    kind: IdentityKind,
    name: str,
    *,
    hosts: Iterable[str] = (),
    days: int | None = None,
    force: bool = False,
) -> Identity:
    """Issue a key and certificate for ``kind``/``name`` signed by the fleet CA.

    The certificate's CN is ``name`` and its OU is ``kind``; the broker gets the server-auth
    usage and ``hosts`` as subject alternative names, every other kind client-auth.

    Raises:
        InvalidIdentityError: ``name`` is not a valid identity name.
        PKIError: no CA, or the key exists and ``force`` is false.
    """
    check_id(name, f"{kind} name")
    hosts = list(hosts)
    if kind == "broker" and not hosts:
        raise PKIError("a broker certificate needs at least one --host (e.g. --host localhost)")
    ca_key, ca_cert = load_ca(root)
    folder = identity_dir(root, kind, name)
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    if key_path.exists() and not force:
        raise PKIError(
            f"{kind} {name!r} already exists in {str(folder)!r}: use --force to replace its key"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
    not_after = min(
        now + dt.timedelta(days=days or DEFAULT_DAYS[kind]), ca_cert.not_valid_after_utc
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, kind))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_sans(kind, name, hosts)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_path, key, force=True)
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Identity(
        kind=kind,
        name=name,
        serial=cert.serial_number,
        not_after=not_after,
        revoked=False,
        cert_path=cert_path,
        key_path=key_path,
    )


def load_crl(root: Path) -> x509.CertificateRevocationList | None:
    """The current CRL, or None when there is none yet."""
    path = crl_path(root)
    return x509.load_pem_x509_crl(path.read_bytes()) if path.is_file() else None


def _write_crl(
    root: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[x509.RevokedCertificate],
) -> None:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(crl_path(root), crl.public_bytes(serialization.Encoding.PEM))


def identities(root: Path) -> list[Identity]:
    """Every identity issued under ``root``, with its revocation state from the CRL."""
    crl = load_crl(root)
    revoked = {entry.serial_number for entry in crl} if crl is not None else set()
    found = []
    for kind in KINDS:
        for cert_path in sorted((root / kind).glob("*/cert.pem")):
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            found.append(
                Identity(
                    kind=kind,
                    name=cert_path.parent.name,
                    serial=cert.serial_number,
                    not_after=cert.not_valid_after_utc,
                    revoked=cert.serial_number in revoked,
                    cert_path=cert_path,
                    key_path=cert_path.parent / "key.pem",
                )
            )
    return found


def revoke(root: Path, name: str, kind: IdentityKind | None = None) -> Identity:
    """Revoke the current certificate of ``name`` and rewrite the CRL.

    Raises:
        PKIError: no such identity, or the name exists under several kinds and ``kind`` is None.
    """
    ca_key, ca_cert = load_ca(root)
    matches = [i for i in identities(root) if i.name == name and kind in (None, i.kind)]
    if not matches:
        raise PKIError(f"no identity named {name!r} in {str(root)!r}: see 'canvoy certs list'")
    if len(matches) > 1:
        kinds = ", ".join(i.kind for i in matches)
        raise PKIError(f"{name!r} exists as {kinds}: say which with --kind")
    target = matches[0]
    crl = load_crl(root)
    entries = list(crl) if crl is not None else []
    if target.serial not in {e.serial_number for e in entries}:
        entries.append(
            x509.RevokedCertificateBuilder()
            .serial_number(target.serial)
            .revocation_date(_now())
            .build()
        )
    _write_crl(root, ca_key, ca_cert, entries)
    return dataclasses.replace(target, revoked=True)
