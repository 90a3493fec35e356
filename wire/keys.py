"""Device keys learned from certificates: checked against the fleet CA, validity, CRL and id.

Used by the bridge and by ``canvoy tail``: both learn keys from the retained birth messages
(which carry the device certificate) or from a directory of known device certificates.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canvoy.errors import PKIError
from canvoy.wire.errors import IdentityMismatchError, UnknownDeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A verified device certificate's public key."""

    device: str
    key: ec.EllipticCurvePublicKey
    fingerprint: str
    not_after: dt.datetime


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


class DeviceKeys:
    """Every device key this process trusts, by device id. Thread-safe."""

    def __init__(self, ca_pem: bytes, crl_pem: bytes | None = None) -> None:
        """Trust certificates issued by ``ca_pem`` and not revoked in ``crl_pem``.

        Raises:
            PKIError: the CA or CRL is not PEM, or the CRL is not signed by the CA.
        """
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise PKIError(f"the fleet CA is not a PEM certificate: {exc}") from exc
        self._revoked: set[int] = set()
        if crl_pem is not None:
            self.load_crl(crl_pem)
        self._keys: dict[str, DeviceKey] = {}
        self._by_fingerprint: dict[str, DeviceKey] = {}
        self._serials: dict[str, int] = {}
        self._lock = threading.Lock()

    def load_crl(self, crl_pem: bytes) -> None:
        """Replace the revocation list (and forget keys it revokes on their next use).

        Raises:
            PKIError: the CRL is not PEM or not signed by the fleet CA.
        """
        try:
            crl = x509.load_pem_x509_crl(crl_pem)
        except ValueError as exc:
            raise PKIError(f"the CRL is not PEM: {exc}") from exc
        ca_key = self._ca.public_key()
        assert isinstance(ca_key, ec.EllipticCurvePublicKey)
        if not crl.is_signature_valid(ca_key):
            raise PKIError("the CRL is not signed by the fleet CA")
        self._revoked = {r.serial_number for r in crl}

    def learn(self, device: str, cert_pem: bytes | str) -> DeviceKey:
        """Check ``cert_pem`` for ``device`` and trust its key; a newer one replaces the old.

        Raises:
            UnknownDeviceError: not issued by the fleet CA, expired, not yet valid, or revoked.
            IdentityMismatchError: the certificate's CN is not ``device``, or it is not a
                device certificate.
        """
        data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise UnknownDeviceError(f"{device}: the certificate is not PEM") from exc
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        with self._lock:
            known = self._by_fingerprint.get(fingerprint)
        if known is not None and known.device == device and cert.serial_number not in self._revoked:
            with self._lock:
                self._keys[device] = known
            return known
        try:
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise UnknownDeviceError(
                f"{device}: certificate is not issued by the fleet CA", "unknown_device"
            ) from exc
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise UnknownDeviceError(
                f"{device}: certificate is outside its validity "
                f"({cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})",
                "unknown_device",
            )
        if cert.serial_number in self._revoked:
            with self._lock:
                self._keys.pop(device, None)
                self._serials[device] = cert.serial_number  # later envelopes: "revoked"
            raise UnknownDeviceError(f"{device}: certificate is revoked", "revoked")
        cn = _attr(cert.subject, NameOID.COMMON_NAME)
        unit = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
        if cn != device:
            raise IdentityMismatchError(
                f"certificate CN {cn!r} is not the topic's device {device!r}"
            )
        if unit != "device":
            raise IdentityMismatchError(
                f"{device}: certificate is a {unit!r} identity, not a device"
            )
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UnknownDeviceError(f"{device}: certificate key is not ECDSA", "unknown_device")
        entry = DeviceKey(device, key, fingerprint, cert.not_valid_after_utc)
        with self._lock:
            previous = self._keys.get(device)
            self._keys[device] = entry
            self._by_fingerprint[fingerprint] = entry
        if previous is not None and previous.fingerprint != fingerprint:
            log.info("device %s: key replaced by a renewed certificate", device)
        self._serials[device] = cert.serial_number
        return entry

    def get(self, device: str) -> DeviceKey | None:
        """The trusted key of ``device``, or None when none is known (or it was revoked)."""
        with self._lock:
            entry = self._keys.get(device)
        if entry is not None and self._serials.get(device) in self._revoked:
            return None
        return entry

    def require(self, device: str) -> DeviceKey:
        """Like ``get`` but raises.

        Raises:
            UnknownDeviceError: no trusted key (reason ``unknown_device`` or ``revoked``).
        """
        entry = self.get(device)
        if entry is None:
            reason = "revoked" if device in self._serials else "unknown_device"
            raise UnknownDeviceError(f"{device}: no trusted certificate ({reason})", reason)
        return entry

    def preload(self, folder: Path) -> int:
        """Learn every ``*.pem`` under ``folder`` (named by CN); return how many were trusted."""
        count = 0
        for path in sorted(folder.rglob("*.pem")):
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                continue
            device = _attr(cert.subject, NameOID.COMMON_NAME)
            try:
                self.learn(device, path.read_bytes())
                count += 1
            except (UnknownDeviceError, IdentityMismatchError) as exc:
                log.warning("known device certificate %s not trusted: %s", path, exc)
        return count
