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


MAX_KEYS_PER_DEVICE = 4  # certificates of one device trusted at once (renewals overlap)


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A verified device certificate's public key."""

    device: str
    key: ec.EllipticCurvePublicKey
    fingerprint: str
    not_after: dt.datetime
    serial: int
    not_before: dt.datetime


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


class DeviceKeys:
    """Every device key this process trusts, by device id. Thread-safe.

    The rule (docs/PROTOCOL.md, "Keys"): a device's key is trusted from a certificate whose CN is
    the device and whose OU is ``device``, issued by the fleet CA, inside its validity and not
    revoked, and only once a status envelope signed with that very key has verified (``check``
    then ``trust``). Every such certificate stays trusted until it expires or is revoked, so during
    a renewal the old and the new key both verify, and replaying an old birth changes nothing.
    """

    def __init__(self, ca_pem: bytes, crl_pem: bytes | None = None) -> None:
        """Trust certificates issued by ``ca_pem`` and not revoked in ``crl_pem``.

        Raises:
            PKIError: the CA or CRL is not PEM, or the CRL is not signed by the CA.
        """
        try:
            self._ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as exc:
            raise PKIError(f"the fleet CA is not a PEM certificate: {exc}") from exc
        self._lock = threading.Lock()
        self._revoked: frozenset[int] = frozenset()
        self._keys: dict[str, dict[str, DeviceKey]] = {}
        self._revoked_devices: set[str] = set()
        if crl_pem is not None:
            self.load_crl(crl_pem)

    def load_crl(self, crl_pem: bytes) -> list[str]:
        """Replace the revocation list; drop the keys it revokes; return their devices.

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
        revoked = frozenset(r.serial_number for r in crl)
        dropped = []
        with self._lock:
            self._revoked = revoked
            for device, entries in self._keys.items():
                gone = [f for f, e in entries.items() if e.serial in revoked]
                for fingerprint in gone:
                    del entries[fingerprint]
                if gone:
                    dropped.append(device)
                    if not entries:
                        self._revoked_devices.add(device)
        for device in dropped:
            log.warning("device %s: a trusted certificate is revoked; its key is dropped", device)
        return dropped

    def check(self, device: str, cert_pem: bytes | str) -> DeviceKey:
        """Check ``cert_pem`` for ``device`` without trusting it yet (nothing changes).

        Raises:
            IdentityMismatchError: the certificate's CN is not ``device``, or it is not a
                device certificate.
            UnknownDeviceError: not issued by the fleet CA, expired, not yet valid, or revoked.
        """
        data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise UnknownDeviceError(f"{device}: the certificate is not PEM") from exc
        # Whose it is comes first: another identity's certificate says nothing about this one.
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
                if not self._keys.get(device):  # only names the reason its envelopes fail with
                    self._revoked_devices.add(device)
            raise UnknownDeviceError(f"{device}: certificate is revoked", "revoked")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise UnknownDeviceError(f"{device}: certificate key is not ECDSA", "unknown_device")
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        return DeviceKey(
            device,
            key,
            fingerprint,
            cert.not_valid_after_utc,
            cert.serial_number,
            cert.not_valid_before_utc,
        )

    def trust(self, entry: DeviceKey) -> None:
        """Trust a key ``check`` returned (after its signature verified); keep at most
        MAX_KEYS_PER_DEVICE per device, dropping expired ones, then the oldest."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            if entry.serial in self._revoked:
                return
            entries = self._keys.setdefault(entry.device, {})
            new = entry.fingerprint not in entries
            entries[entry.fingerprint] = entry
            for f in [f for f, e in entries.items() if e.not_after < now]:
                del entries[f]
            while len(entries) > MAX_KEYS_PER_DEVICE:
                oldest = min(entries.values(), key=lambda e: e.not_before)
                del entries[oldest.fingerprint]
            self._revoked_devices.discard(entry.device)
            count = len(entries)
        if new and count > 1:
            log.info("device %s: a renewed certificate is trusted (%d keys)", entry.device, count)

    def learn(self, device: str, cert_pem: bytes | str) -> DeviceKey:
        """``check`` and ``trust`` at once, for certificates from a trusted place (a directory
        of known devices), not from a message.

        Raises:
            UnknownDeviceError: see ``check``.
            IdentityMismatchError: see ``check``.
        """
        entry = self.check(device, cert_pem)
        self.trust(entry)
        return entry

    def all(self, device: str) -> tuple[DeviceKey, ...]:
        """Every trusted, unexpired key of ``device``, newest certificate first."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            entries = list(self._keys.get(device, {}).values())
        valid = [e for e in entries if e.not_after >= now]
        return tuple(sorted(valid, key=lambda e: e.not_before, reverse=True))

    def known(self) -> int:
        """How many devices have a trusted key (expired ones count until they are replaced)."""
        with self._lock:
            return sum(1 for entries in self._keys.values() if entries)

    def get(self, device: str) -> DeviceKey | None:
        """The newest trusted key of ``device``, or None when none is known (or revoked)."""
        entries = self.all(device)
        return entries[0] if entries else None

    def require(self, device: str) -> tuple[DeviceKey, ...]:
        """Like ``all`` but raises when there is none.

        Raises:
            UnknownDeviceError: no trusted key (reason ``unknown_device`` or ``revoked``).
        """
        entries = self.all(device)
        if not entries:
            with self._lock:
                reason = "revoked" if device in self._revoked_devices else "unknown_device"
            raise UnknownDeviceError(f"{device}: no trusted certificate ({reason})", reason)
        return entries

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
