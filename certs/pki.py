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
# Certificates start a little in the past so that a clock a few minutes behind accepts them.
BACKDATE = dt.timedelta(minutes=5)


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


def kinds_of(root: Path, name: str) -> list[IdentityKind]:
    """The kinds under which ``name`` exists in the PKI (a folder with a key or certificate)."""
    return [
        kind
        for kind in KINDS
        if any((identity_dir(root, kind, name) / f).exists() for f in ("cert.pem", "key.pem"))
    ]


def check_unique(root: Path, kind: IdentityKind, name: str) -> None:
    """Refuse ``name`` for ``kind`` when it is already another kind's identity.

    One name is one identity: a device may never share a name with a bridge or an operator.

    Raises:
        PKIError: ``name`` exists under another kind; the message names it.
    """
    others = [k for k in kinds_of(root, name) if k != kind]
    if others:
        raise PKIError(
            f"{name!r} is already a {others[0]} identity in {str(root)!r} "
            f"({identity_dir(root, others[0], name)}): names are unique across kinds; "
            f"choose another name for the {kind}"
        )


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool = False) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600, atomically.

    Raises:
        PKIError: ``path`` exists and ``force`` is false.
    """
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


def write_public(path: Path, pem: bytes) -> None:
    """Write a certificate, CRL or request (mode 0644), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pem)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def subject(common_name: str, unit: str) -> x509.Name:
    """``O=canvoy fleet, OU=<unit>, CN=<common_name>``: the subject of every identity."""
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
    now = _now()
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
    now = _now()
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
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return _identity(kind, cert, cert_path, revoked=False)


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


def load_certificate(path: Path) -> x509.Certificate:
    """Read one PEM certificate.

    Raises:
        PKIError: the file cannot be read or is not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise PKIError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise PKIError(f"{str(path)!r} is not a PEM certificate: {exc}") from exc


def load_crl(root: Path) -> x509.CertificateRevocationList | None:
    """The current CRL, or None when there is none yet.

    Raises:
        PKIError: the file is not a PEM CRL.
    """
    path = crl_path(root)
    if not path.is_file():
        return None
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except ValueError as exc:
        raise PKIError(
            f"{str(path)!r} is not a PEM CRL: restore it from the CA host's copy"
        ) from exc


def _write_crl(
    root: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[x509.RevokedCertificate],
    *,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(now + dt.timedelta(days=days))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    write_public(crl_path(root), crl.public_bytes(serialization.Encoding.PEM))
    return crl


def resign_crl(root: Path, *, days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    """Sign the CRL again with the same revoked serials and a next update ``days`` from now.

    Run it on the CA host before the next update (a cron job or timer), then copy ``crl.pem``
    to the brokers and bridges: a CRL past its next update makes Mosquitto refuse everyone.

    Raises:
        PKIError: no CA, or ``days`` is not positive.
    """
    if isinstance(days, bool) or days <= 0:
        raise PKIError(f"--days {days} is invalid: the CRL must be valid for a positive number")
    ca_key, ca_cert = load_ca(root)
    current = load_crl(root)
    entries = list(current) if current is not None else []
    return _write_crl(root, ca_key, ca_cert, entries, days=days)


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
    _write_crl(root, ca_key, ca_cert, entries, days=_crl_days(crl))
    return dataclasses.replace(target, revoked=True)


def _crl_days(crl: x509.CertificateRevocationList | None) -> int:
    """Keep the CRL's cadence (``certs crl --days``) when it is rewritten for a revocation."""
    if crl is None or crl.next_update_utc is None:
        return CRL_DAYS
    return max(1, round((crl.next_update_utc - crl.last_update_utc).total_seconds() / 86400))
