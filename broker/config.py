"""Write mosquitto.conf and the ACL file from the fleet PKI."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path

from canvoy.certs import pki
from canvoy.errors import BrokerError, ConfigError, PKIError
from canvoy.wire.topics import FLEET_PREFIX, PREFIX

# A bridge restarting for minutes at fleet rate must not lose messages: Mosquitto's default
# of 1,000 queued messages per client drops the rest silently.
DEFAULT_MAX_QUEUED_MESSAGES = 1_000_000
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024 * 1024
# 128 KiB payload plus topic, properties and headers.
MAX_PACKET_BYTES = 128 * 1024 + 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    """Where and how the broker listens; see docs/CONFIG.md (broker)."""

    certs: Path
    port: int
    data: Path
    bind: str = "127.0.0.1"
    broker_name: str = "broker"
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    max_inflight_messages: int = 20
    autosave_changes: int = 1  # save the database after this many changes
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is invalid: use 1-65535")
        if self.autosave_changes < 1:
            raise ConfigError(f"--autosave-changes {self.autosave_changes} must be >= 1")
        if self.max_queued_messages < 0 or self.max_queued_bytes < 0:
            raise ConfigError(
                "--max-queued-messages and --max-queued-bytes must be >= 0 (0 = no limit)"
            )

    @property
    def conf_path(self) -> Path:
        """The generated mosquitto.conf."""
        return self.data / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        """The generated ACL file."""
        return self.data / "acl"


def render_acl(identities: list[pki.Identity]) -> str:
    """The ACL text: each identity gets exactly its rights, nobody else gets anything.

    The broker's username is the certificate's whole subject (``use_subject_as_username``),
    ``CN=<name>,OU=<kind>,O=canvoy fleet``: the kind is part of the name the rules are keyed
    on, so a device certificate never gets a bridge's or an operator's rights, even with the
    same CN. Revoked identities get no rules (the CRL already keeps them out; a second lock).
    """
    lines = ["# Written by 'canvoy broker' from the fleet PKI. Do not edit: it is rewritten.", ""]
    for ident in identities:
        if ident.revoked or ident.kind == "broker":
            continue
        lines.append(f"user {username(ident)}")
        if ident.kind == "device":
            base = f"{PREFIX}/{ident.name}"
            lines += [
                f"topic write {base}/telemetry",
                f"topic write {base}/events",
                f"topic write {base}/status",
                f"topic read {base}/receipts",
            ]
        elif ident.kind == "bridge":
            lines += [
                f"topic read {PREFIX}/+/#",
                f"topic write {FLEET_PREFIX}/#",
                f"topic write {PREFIX}/+/receipts",
            ]
        elif ident.kind == "operator":
            lines += [f"topic read {FLEET_PREFIX}/#", f"topic read {PREFIX}/+/#"]
        lines.append("")
    return "\n".join(lines)


def username(ident: pki.Identity) -> str:
    """The username (and client id) Mosquitto gives ``ident``'s connections: its subject as
    OpenSSL prints it in RFC 2253 form, which is what ``rfc4514_string`` writes."""
    return pki.subject(ident.name, ident.kind).rfc4514_string()


def render_conf(settings: BrokerSettings) -> str:
    """The mosquitto.conf text for one mutual-TLS listener."""
    s = settings
    broker_dir = pki.identity_dir(s.certs.resolve(), "broker", s.broker_name)
    certs = s.certs.resolve()
    data = s.data.resolve()
    lines = [
        "# Written by 'canvoy broker'. Do not edit: it is rewritten at every start.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {data / 'acl'}",
        "persistence true",
        f"persistence_location {data}/",
        # The most durable Mosquitto can be: save the in-memory database after every change
        # (each queued message, subscription change or retained message), not every 30 s. It
        # still saves after answering the client and without fsync, so a crash can lose the
        # last moment: agents keep what no bridge has confirmed (docs/PROTOCOL.md, "Broker").
        "autosave_on_changes true",
        f"autosave_interval {s.autosave_changes}",
        f"max_queued_messages {s.max_queued_messages}",
        f"max_queued_bytes {s.max_queued_bytes}",
        f"max_inflight_messages {s.max_inflight_messages}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        # Stay inside AWS IoT Core's limits: no topic aliases.
        "max_topic_alias 0",
        "log_dest stderr",
        *[f"log_type {t}" for t in s.log_types],
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        f"user {getpass.getuser()}",
        "",
        f"listener {s.port} {s.bind}",
        f"cafile {pki.ca_cert_path(certs)}",
        f"certfile {broker_dir / 'cert.pem'}",
        f"keyfile {broker_dir / 'key.pem'}",
        f"crlfile {pki.crl_path(certs)}",
        "require_certificate true",
        # Username = the certificate's subject (kind and name), and the client id = the username:
        # no connection can take another identity's client id or persistent session.
        "use_subject_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
        "set_tcp_nodelay true",
        "",
    ]
    return "\n".join(lines)


def write_config(settings: BrokerSettings) -> Path:
    """Write mosquitto.conf and the ACL into ``settings.data``; return the conf path.

    Raises:
        BrokerError: the data directory is not writable.
        PKIError: there is no fleet CA or no broker certificate.
    """
    certs = settings.certs
    # Only the CA certificate: the CA's private key stays on the CA host (docs/SECURITY.md).
    if not pki.ca_cert_path(certs).is_file():
        raise PKIError(
            f"no fleet CA certificate at {str(pki.ca_cert_path(certs))!r}: copy ca.pem from "
            f"the CA host, or run 'canvoy certs init --certs {certs}' for a new fleet"
        )
    cert = pki.identity_dir(certs, "broker", settings.broker_name) / "cert.pem"
    if not cert.is_file():
        raise PKIError(
            f"no broker certificate at {str(cert)!r}: run "
            f"'canvoy certs issue broker --certs {certs} --host localhost --host 127.0.0.1'"
        )
    try:
        settings.data.mkdir(parents=True, exist_ok=True)
        write_acl(settings)
        tmp = settings.conf_path.with_suffix(".tmp")
        tmp.write_text(render_conf(settings))
        os.replace(tmp, settings.conf_path)
    except OSError as exc:
        raise BrokerError(f"cannot write broker config in {str(settings.data)!r}: {exc}") from exc
    return settings.conf_path


def write_acl(settings: BrokerSettings) -> Path:
    """Rewrite the ACL from the PKI as it is now (used at start and on SIGHUP)."""
    tmp = settings.acl_path.with_suffix(".tmp")
    tmp.write_text(render_acl(pki.identities(settings.certs)))
    os.replace(tmp, settings.acl_path)
    return settings.acl_path
