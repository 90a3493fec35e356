"""The certificate revocation list: read it, write it, re-sign it before its next update."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.certs.layout import BACKDATE, crl_path, load_ca, utcnow, write_public
from canvoy.errors import PKIError

CRL_DAYS = 365


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


def write_crl(
    root: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: list[x509.RevokedCertificate],
    *,
    days: int = CRL_DAYS,
) -> x509.CertificateRevocationList:
    now = utcnow()
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
    return write_crl(root, ca_key, ca_cert, entries, days=days)


def crl_days(crl: x509.CertificateRevocationList | None) -> int:
    """Keep the CRL's cadence (``certs crl --days``) when it is rewritten for a revocation."""
    if crl is None or crl.next_update_utc is None:
        return CRL_DAYS
    return max(1, round((crl.next_update_utc - crl.last_update_utc).total_seconds() / 86400))
