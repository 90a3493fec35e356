"""Where everything of a fleet PKI lives on disk, and the few ways it is read and written."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canvoy.errors import PKIError
from canvoy.wire.tls import TlsFiles

IdentityKind = Literal["broker", "device", "bridge", "operator"]
KINDS: tuple[IdentityKind, ...] = get_args(IdentityKind)
ORGANIZATION = "canvoy fleet"
# Certificates start a little in the past so that a clock a few minutes behind accepts them.
BACKDATE = dt.timedelta(minutes=5)


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
                f"'canvoy certs issue {kind} {name} --certs {root}'"
            )
    return folder


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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


def load_ca(root: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Load the CA key and certificate.

    Raises:
        PKIError: there is no CA under ``root`` or it cannot be read.
    """
    if not ca_cert_path(root).is_file() or not ca_key_path(root).is_file():
        raise PKIError(
            f"no fleet CA in {str(root)!r}: run 'canvoy certs init --certs {root}' first"
        )
    key = serialization.load_pem_private_key(ca_key_path(root).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"CA key {str(ca_key_path(root))!r} is not an EC key")
    return key, x509.load_pem_x509_certificate(ca_cert_path(root).read_bytes())


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
