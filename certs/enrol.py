"""Enrolment and renewal without moving keys: certificate requests, signing, renewal.

The seam for keys in hardware is ``KeySource``: ``request`` asks it for the public key and a
signature over the request, and nothing else here touches a private key. ``FileKey`` keeps the
key in a PEM file (mode 0600); a PKCS#11 token, a TPM or a secure element would be another
``KeySource`` whose private key never leaves the chip (``cryptography`` signs requests with any
object that implements ``ec.EllipticCurvePrivateKey``, which is how such keys plug in).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canvoy.certs import pki
from canvoy.errors import PKIError
from canvoy.wire.ids import ID_PATTERN, check_id


class KeySource(Protocol):
    """Where an identity's private key lives; it signs, it is never exported."""

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The key object that signs (a handle to hardware, or a key read from a file)."""
        ...


@dataclass(frozen=True, slots=True)
class FileKey:
    """A P-256 key in a PEM file, made there (mode 0600) the first time it is needed."""

    path: Path

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """Load the key, or make it when the file does not exist.

        Raises:
            PKIError: the file exists but is not an unencrypted P-256 PEM key.
        """
        if not self.path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            try:
                pki.write_key(self.path, key)
            except OSError as exc:
                raise PKIError(f"cannot write key {str(self.path)!r}: {exc.strerror}") from exc
            return key
        try:
            key_obj = serialization.load_pem_private_key(self.path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise PKIError(f"cannot use key {str(self.path)!r}: {exc}") from exc
        if not isinstance(key_obj, ec.EllipticCurvePrivateKey) or key_obj.curve.name != (
            "secp256r1"
        ):
            raise PKIError(f"key {str(self.path)!r} is not an ECDSA P-256 key")
        return key_obj


def request(
    kind: pki.IdentityKind, name: str, key: KeySource, output: Path
) -> x509.CertificateSigningRequest:
    """Write a certificate request for ``kind``/``name`` signed by ``key`` to ``output``.

    Runs where the key lives (the vehicle, the bridge host, the factory's HSM station).

    Raises:
        InvalidIdentityError: ``name`` is not a valid identity name.
        PKIError: the key cannot be used or ``output`` cannot be written.
    """
    check_id(name, f"{kind} name")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(pki.subject(name, kind))
        .sign(key.private_key(), hashes.SHA256())
    )
    try:
        pki.write_public(output, csr.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise PKIError(f"cannot write {str(output)!r}: {exc.strerror}") from exc
    return csr


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else ""


def read_request(path: Path) -> tuple[pki.IdentityKind, str, ec.EllipticCurvePublicKey]:
    """The kind, name and key a request asks for, after checking it is well-formed and signed.

    Raises:
        PKIError: not a PEM request, a bad signature, not P-256, or a subject that is not
            ``O=canvoy fleet, OU=<kind>, CN=<name>``.
    """
    try:
        csr = x509.load_pem_x509_csr(path.read_bytes())
    except OSError as exc:
        raise PKIError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise PKIError(f"{str(path)!r} is not a PEM certificate request: {exc}") from exc
    if not csr.is_signature_valid:
        raise PKIError(f"{str(path)!r}: the request's signature does not match its key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise PKIError(f"{str(path)!r}: the key must be ECDSA P-256")
    with warnings.catch_warnings():
        # cryptography warns about out-of-bounds attributes; the name check below refuses them.
        warnings.simplefilter("ignore", UserWarning)
        unit = _attr(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        name = _attr(csr.subject, NameOID.COMMON_NAME)
    if (
        unit not in pki.KINDS
        or ID_PATTERN.fullmatch(name) is None
        or csr.subject != pki.subject(name, unit)
    ):
        raise PKIError(
            f"{str(path)!r} asks for {csr.subject.rfc4514_string()!r}: make requests with "
            "'canvoy certs request KIND NAME', whose subject is O=canvoy fleet, OU=KIND, CN=NAME"
        )
    return unit, name, key


def sign(
    root: Path,
    csr_path: Path,
    *,
    hosts: list[str] | None = None,
    days: int | None = None,
    hours: int | None = None,
    force: bool = False,
) -> pki.Identity:
    """Issue the certificate a request asks for; the CA directory gets no private key.

    Raises:
        PKIError: the request is unusable, the name belongs to another kind, or the identity
            already exists and ``force`` is false.
    """
    kind, name, key = read_request(csr_path)
    valid_for = pki.lifetime(kind, days=days, hours=hours)
    pki.check_unique(root, kind, name)
    pki.check_hosts(kind, hosts or [])
    folder = pki.identity_dir(root, kind, name)
    current = folder / "cert.pem"
    if current.exists() and not force:
        if pki.load_certificate(current).public_key() == key:
            raise PKIError(
                f"{kind} {name!r} already has a certificate for this key: renew it with "
                f"'canvoy certs renew {kind} {name} --certs {root}'"
            )
        raise PKIError(
            f"{kind} {name!r} already exists with another key in {str(folder)!r}: "
            "use --force to replace it (the old key's certificate stays valid until revoked)"
        )
    pki.load_ca(root)
    ident = pki.certify(root, kind, name, key, hosts=hosts or [], valid_for=valid_for)
    # A key the CA made earlier for this name is no longer the identity's: do not keep it.
    (folder / "key.pem").unlink(missing_ok=True)
    return ident


def renew(
    root: Path,
    kind: pki.IdentityKind,
    name: str,
    *,
    new_key: bool = False,
    days: int | None = None,
    hours: int | None = None,
) -> pki.Identity:
    """A new certificate for ``kind``/``name``: same key (read from the current certificate),
    or with ``new_key`` a new key made in the PKI (only for keys the PKI made).

    The broker keeps its host names. The old certificate stays valid until it expires or is
    revoked; with the same key there is nothing to retire.

    Raises:
        PKIError: no such identity, or ``new_key`` for a key that lives elsewhere.
    """
    check_id(name, f"{kind} name")
    valid_for = pki.lifetime(kind, days=days, hours=hours)
    folder = pki.identity_dir(root, kind, name)
    current = folder / "cert.pem"
    if not current.is_file():
        raise PKIError(
            f"no {kind} {name!r} in {str(root)!r}: issue it with "
            f"'canvoy certs issue {kind} {name} --certs {root}'"
        )
    old = pki.load_certificate(current)
    hosts = _hosts(old)
    if not new_key:
        key = old.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise PKIError(f"{str(current)!r}: the key is not ECDSA; renew with --new-key")
        return pki.certify(root, kind, name, key, hosts=hosts, valid_for=valid_for)
    key_path = folder / "key.pem"
    if not key_path.is_file():
        raise PKIError(
            f"{kind} {name!r} was enrolled by request, so its key is not here: make a new key "
            f"where it lives with 'canvoy certs request {kind} {name} --key NEW.pem -o "
            f"{name}.csr' and sign that with 'canvoy certs sign {name}.csr --certs {root} --force'"
        )
    private = ec.generate_private_key(ec.SECP256R1())
    pki.write_key(key_path, private, force=True)
    return pki.certify(root, kind, name, private.public_key(), hosts=hosts, valid_for=valid_for)


def _hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]
