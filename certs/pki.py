"""Make the fleet PKI: the CA, identities and revocations (layout in certs/README.md and
``canvoy.certs.layout``; the CRL in ``canvoy.certs.crl``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from canvoy.certs.crl import CRL_DAYS, crl_days, load_crl, resign_crl, write_crl
from canvoy.certs.layout import (
    BACKDATE,
    KINDS,
    ORGANIZATION,
    IdentityKind,
    ca_cert_path,
    ca_key_path,
    check_unique,
    crl_path,
    identity_dir,
    kinds_of,
    load_ca,
    load_certificate,
    require_identity,
    subject,
    tls_files,
    utcnow,
    write_key,
    write_public,
)
from canvoy.errors import PKIError
from canvoy.wire.ids import check_id

CA_DAYS = 3650
DEFAULT_DAYS: dict[IdentityKind, int] = {
    "broker": 825,
    "device": 1825,
    "bridge": 825,
    "operator": 365,
}


__all__ = [
    "CA_DAYS",
    "CRL_DAYS",
    "DEFAULT_DAYS",
    "KINDS",
    "ORGANIZATION",
    "Identity",
    "IdentityKind",
    "ca_cert_path",
    "ca_key_path",
    "certify",
    "check_hosts",
    "check_unique",
    "crl_path",
    "identities",
    "identity_dir",
    "init_ca",
    "issue",
    "issued_dir",
    "issued_serials",
    "kinds_of",
    "lifetime",
    "load_ca",
    "load_certificate",
    "load_crl",
    "require_identity",
    "resign_crl",
    "revoke",
    "subject",
    "tls_files",
    "write_key",
    "write_public",
]


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
    not_before: dt.datetime | None = None
    subject: str = ""

    @property
    def key_at_ca(self) -> bool:
        """True when the private key was made here (``certs issue``), not enrolled by request."""
        return self.key_path.is_file()


def lifetime(
    kind: IdentityKind, *, days: int | None = None, hours: int | None = None
) -> dt.timedelta:
    """How long a new ``kind`` certificate is valid: ``days`` or ``hours``, else the default.

    Raises:
        PKIError: ``days`` or ``hours`` is not a positive whole number, or both are given.
    """
    if days is not None and hours is not None:
        raise PKIError("give --days or --hours, not both")
    for value, unit in ((days, "days"), (hours, "hours")):
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise PKIError(
                f"--{unit} {value} is invalid: a certificate must be valid for a positive "
                "number of days (or --hours N for a short-lived one)"
            )
    if hours is not None:
        return dt.timedelta(hours=hours)
    return dt.timedelta(days=days if days is not None else DEFAULT_DAYS[kind])


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
        PKIError: a CA already exists and ``force`` is false, or ``days`` is not positive.
    """
    if isinstance(days, bool) or days <= 0:
        raise PKIError(f"--days {days} is invalid: the CA must be valid for a positive number")
    if ca_cert_path(root).exists() and not force:
        raise PKIError(
            f"a fleet CA already exists at {str(ca_cert_path(root))!r}: use --force to replace it "
            "(every certificate it issued stops working)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = subject("canvoy fleet root CA", "ca")
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_key(ca_key_path(root), key, force=True)
    write_public(ca_cert_path(root), cert.public_bytes(serialization.Encoding.PEM))
    write_crl(root, key, cert, [])
    return ca_cert_path(root)


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
    hours: int | None = None,
    force: bool = False,
) -> Identity:
    """Issue a key and certificate for ``kind``/``name`` signed by the fleet CA.

    The certificate's CN is ``name`` and its OU is ``kind``; the broker gets the server-auth
    usage and ``hosts`` as subject alternative names, every other kind client-auth.

    Raises:
        InvalidIdentityError: ``name`` is not a valid identity name.
        PKIError: no CA, ``name`` is another kind's, the validity is not positive, or the key
            exists and ``force`` is false.
    """
    check_id(name, f"{kind} name")
    valid_for = lifetime(kind, days=days, hours=hours)
    check_unique(root, kind, name)
    folder = identity_dir(root, kind, name)
    key_path = folder / "key.pem"
    if (key_path.exists() or (folder / "cert.pem").exists()) and not force:
        raise PKIError(
            f"{kind} {name!r} already exists in {str(folder)!r}: use --force to replace its key, "
            f"or 'canvoy certs renew {kind} {name}' to keep it"
        )
    load_ca(root)
    check_hosts(kind, hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    write_key(key_path, key, force=True)
    return certify(root, kind, name, key.public_key(), hosts=hosts, valid_for=valid_for)


def check_hosts(kind: IdentityKind, hosts: Iterable[str]) -> None:
    """A broker certificate names the hosts clients reach it by.

    Raises:
        PKIError: ``kind`` is broker and ``hosts`` is empty.
    """
    if kind == "broker" and not list(hosts):
        raise PKIError("a broker certificate needs at least one --host (e.g. --host localhost)")


def certify(
    root: Path,
    kind: IdentityKind,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    hosts: Iterable[str],
    valid_for: dt.timedelta,
) -> Identity:
    """Sign a certificate for ``public_key`` as ``kind``/``name`` and write it to the PKI.

    The one place certificates are made: ``issue`` (key made here), ``sign`` (key from a
    request) and ``renew`` (key of the current certificate) all come through here. The CA
    never sees the identity's private key.

    Raises:
        PKIError: no CA, or the key is not ECDSA P-256.
    """
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != (
        "secp256r1"
    ):
        raise PKIError(f"{kind} {name!r}: the key must be ECDSA P-256")
    hosts = list(hosts)
    ca_key, ca_cert = load_ca(root)
    now = utcnow()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
    not_after = min(now + valid_for, ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject(name, kind))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
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
    folder = identity_dir(root, kind, name)
    cert_path = folder / "cert.pem"
    pem = cert.public_bytes(serialization.Encoding.PEM)
    # Every certificate an identity ever had, so that revoking it revokes them all: a renewal
    # keeps the key, and the previous certificate stays valid until it expires.
    # Kept outside the identity's folder, so that a directory of current device certificates
    # (the bridge's known_devices) never holds old ones.
    write_public(issued_dir(root, kind, name) / f"{cert.serial_number:x}.pem", pem)
    write_public(cert_path, pem)
    return _identity(kind, cert, cert_path, revoked=False)


def issued_dir(root: Path, kind: IdentityKind, name: str) -> Path:
    """``DIR/issued/<kind>/<name>``: a copy of every certificate issued to that identity."""
    return root / "issued" / kind / name


def issued_serials(root: Path, kind: IdentityKind, name: str) -> set[int]:
    """The serials of every certificate issued to ``kind``/``name``, the current one included."""
    found = issued_dir(root, kind, name).glob("*.pem")
    serials = {int(p.stem, 16) for p in found if _is_hex(p.stem)}
    current = identity_dir(root, kind, name) / "cert.pem"
    if current.is_file():
        serials.add(load_certificate(current).serial_number)
    return serials


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _identity(
    kind: IdentityKind, cert: x509.Certificate, cert_path: Path, *, revoked: bool
) -> Identity:
    return Identity(
        kind=kind,
        name=cert_path.parent.name,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        revoked=revoked,
        cert_path=cert_path,
        key_path=cert_path.parent / "key.pem",
        subject=cert.subject.rfc4514_string(),
    )


def identities(root: Path) -> list[Identity]:
    """Every identity issued under ``root``, with its revocation state from the CRL."""
    crl = load_crl(root)
    revoked = {entry.serial_number for entry in crl} if crl is not None else set()
    found = []
    for kind in KINDS:
        for cert_path in sorted((root / kind).glob("*/cert.pem")):
            cert = load_certificate(cert_path)
            found.append(_identity(kind, cert, cert_path, revoked=cert.serial_number in revoked))
    return found


def revoke(
    root: Path, name: str, kind: IdentityKind | None = None, *, previous: bool = False
) -> Identity:
    """Revoke every certificate issued to ``name`` (with ``previous``: all but the current one,
    to retire old certificates after a key change) and rewrite the CRL.

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
    serials = issued_serials(root, target.kind, target.name)
    if previous:
        serials.discard(target.serial)
    listed = {e.serial_number for e in entries}
    for serial in sorted(serials - listed):
        entries.append(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(utcnow()).build()
        )
    write_crl(root, ca_key, ca_cert, entries, days=crl_days(crl))
    return dataclasses.replace(target, revoked=not previous)
