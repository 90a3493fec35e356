"""TLS contexts for mutually authenticated MQTT: TLS 1.2 or newer, the fleet CA only."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from canvoy.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """The fleet CA and one identity's certificate and key (PEM files)."""

    ca: Path
    cert: Path
    key: Path

    def resolve(self, base: Path) -> TlsFiles:
        """Relative paths made relative to ``base`` (the config file's directory)."""
        return TlsFiles(
            ca=base / self.ca, cert=base / self.cert, key=base / self.key
        )  # base / absolute == absolute

    def context(self) -> ssl.SSLContext:
        """The client TLS context for these files (see ``client_context``)."""
        return client_context(ca=self.ca, cert=self.cert, key=self.key)


def client_context(*, ca: Path, cert: Path, key: Path, check_dates: bool = True) -> ssl.SSLContext:
    """A client context that presents ``cert``/``key`` and trusts only the fleet CA ``ca``.

    ``check_dates=False`` leaves the certificate's validity to the caller (the agent checks it
    before each connection, so that it waits for a renewal instead of exiting).

    Raises:
        ConfigError: a file is missing or does not hold what it should.
    """
    for label, path in (("CA certificate", ca), ("certificate", cert), ("key", key)):
        if not path.is_file():
            raise ConfigError(f"{label} {str(path)!r} does not exist: run 'canvoy certs' first")
    if check_dates:
        _check_validity(cert)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load TLS files {str(cert)!r}/{str(key)!r}: {exc}") from exc
    return ctx


def _check_validity(path: Path) -> None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"{str(path)!r} is not a PEM certificate: {exc}") from exc
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise ConfigError(
            f"certificate {str(path)!r} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
            "renew it on the CA host with 'canvoy certs renew KIND NAME' and copy it here"
        )
    if cert.not_valid_before_utc > now:
        raise ConfigError(
            f"certificate {str(path)!r} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}:"
            " check this machine's clock"
        )
