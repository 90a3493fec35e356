"""The device's TLS files, read again before each connection: a renewed certificate copied over
the old one is used at the next attempt, without restarting the agent."""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canvoy.errors import ConfigError
from canvoy.wire.tls import TlsFiles, client_context


class CertificateProblemError(ConfigError):
    """The device's certificate cannot be used right now; the message says why and what fixes
    it. Collection goes on: the agent tries again until valid files are in place."""


@dataclass(frozen=True, slots=True)
class Loaded:
    """A usable certificate: the TLS context made from it and its PEM (for birth messages)."""

    context: ssl.SSLContext
    cert_pem: str
    not_before: dt.datetime
    not_after: dt.datetime
    stamp: tuple[int, ...]

    def valid_at(self, now: dt.datetime) -> bool:
        """True when ``now`` is inside the certificate's validity."""
        return self.not_before <= now <= self.not_after


class Credentials:
    """What the publisher connects with, checked at every attempt.

    Owned by the publisher thread; ``cert_pem`` (a str, replaced whole) is read by the thread
    that signs status messages.
    """

    def __init__(
        self, device: str, files: TlsFiles, signing_key: ec.EllipticCurvePrivateKey, cert_pem: str
    ) -> None:
        """``signing_key`` is the key the outbox signs envelopes with; ``cert_pem`` the
        certificate read at start (it is what birth messages carry until a renewal)."""
        self.device = device
        self.files = files
        self._public = signing_key.public_key()
        self.cert_pem = cert_pem
        self._loaded: Loaded | None = None

    def _stamp(self) -> tuple[int, ...]:
        stamps: list[int] = []
        for path in (self.files.ca, self.files.cert, self.files.key):
            try:
                st = os.stat(path)
            except OSError:
                stamps += [-1, -1, -1]
                continue
            stamps += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamps)

    def load(self, now: dt.datetime | None = None) -> Loaded:
        """The current files as a TLS context, read again when they changed on disk.

        Raises:
            CertificateProblemError: a file is missing or unreadable, the certificate is
                expired or not valid yet, it names another device, or it is not for the key
                this agent signs with.
        """
        now = now or dt.datetime.now(dt.UTC)
        stamp = self._stamp()
        loaded = self._loaded
        if loaded is None or loaded.stamp != stamp:
            loaded = self._read(stamp)
            self._loaded = loaded
        self._check_validity(loaded, now)
        self.cert_pem = loaded.cert_pem
        return loaded

    def _read(self, stamp: tuple[int, ...]) -> Loaded:
        path = self.files.cert
        try:
            pem = path.read_bytes()
            cert = x509.load_pem_x509_certificate(pem)
        except OSError as exc:
            raise CertificateProblemError(
                f"certificate {str(path)!r} cannot be read ({exc.strerror}): put this device's "
                "certificate there (the agent uses it as soon as it is readable)"
            ) from exc
        except ValueError as exc:
            raise CertificateProblemError(
                f"{str(path)!r} is not a PEM certificate: copy the device's certificate there"
            ) from exc
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else ""
        if cn != self.device:
            raise CertificateProblemError(
                f"certificate {str(path)!r} is for {cn!r}, not this device {self.device!r}: "
                "copy this device's own certificate there"
            )
        if cert.public_key() != self._public:
            raise CertificateProblemError(
                f"certificate {str(path)!r} is not for the key this agent signs with: renew "
                f"with the same key ('canvoy certs renew device {self.device}' without "
                "--new-key), or restart the agent to change keys"
            )
        try:
            context = client_context(
                ca=self.files.ca, cert=path, key=self.files.key, check_dates=False
            )
        except ConfigError as exc:
            raise CertificateProblemError(str(exc)) from exc
        return Loaded(
            context=context,
            cert_pem=pem.decode(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            stamp=stamp,
        )

    def _check_validity(self, loaded: Loaded, now: dt.datetime) -> None:
        path = self.files.cert
        renew = (
            f"on the CA host run 'canvoy certs renew device {self.device}' and copy the new "
            f"cert.pem over {str(path)!r}; the agent connects as soon as it is there"
        )
        if now > loaded.not_after:
            raise CertificateProblemError(
                f"certificate {str(path)!r} expired on {loaded.not_after:%Y-%m-%d %H:%M} UTC; "
                f"collecting into the outbox meanwhile: {renew}"
            )
        if now < loaded.not_before:
            raise CertificateProblemError(
                f"certificate {str(path)!r} is not valid before "
                f"{loaded.not_before:%Y-%m-%d %H:%M} UTC (this clock says {now:%Y-%m-%d %H:%M}):"
                " check the clock (NTP/GNSS); collecting into the outbox meanwhile"
            )
