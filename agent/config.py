"""The agent config file (agent.yaml): identity, buses, policy, batching, outbox, MQTT, delivery."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509 import load_pem_x509_certificate
from cryptography.x509.oid import NameOID

from canvoy.agent.batch import BatchConfig
from canvoy.agent.buses import BusConfig
from canvoy.agent.diagnostics import DiagnosticsConfig
from canvoy.agent.outbox import OutboxConfig
from canvoy.agent.publish import MqttConfig
from canvoy.agent.unconfirmed import DeliveryConfig
from canvoy.config import build, read_yaml
from canvoy.errors import ConfigError
from canvoy.metrics import MetricsConfig
from canvoy.wire.ids import check_id
from canvoy.wire.tls import TlsFiles


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Everything ``canvoy agent run`` needs; see docs/CONFIG.md."""

    device: str
    tls: TlsFiles
    buses: tuple[BusConfig, ...]
    policy: Path | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_id(self.device)
        if not self.buses:
            raise ConfigError("buses: list at least one bus (a live interface or a log replay)")
        names = [b.name for b in self.buses]
        if len(set(names)) != len(names):
            raise ConfigError(f"buses: names must be unique, got {names}")
        if self.shutdown_timeout_s < 0:
            raise ConfigError("shutdown_timeout_s must be >= 0")


def load_config(path: Path) -> AgentConfig:
    """Read ``agent.yaml``; relative paths in it are relative to the file's directory.

    Raises:
        ConfigError: the file is missing, not YAML, or a key is unknown or invalid (named).
    """
    data = read_yaml(path, "agent config")
    if isinstance(data, dict) and isinstance(data.get("delivery"), str):
        data["delivery"] = {"mode": data["delivery"]}  # the short form: ``delivery: broker``
    config = build(AgentConfig, data)
    base = path.resolve().parent
    buses = tuple(
        dataclasses.replace(
            b,
            databases=tuple(base / d for d in b.databases),
            replay=base / b.replay if b.replay is not None else None,
        )
        for b in config.buses
    )
    return dataclasses.replace(
        config,
        tls=config.tls.resolve(base),
        buses=buses,
        policy=base / config.policy if config.policy is not None else None,
        outbox=dataclasses.replace(config.outbox, path=base / config.outbox.path),
    )


def load_device_key(config: AgentConfig) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The device's private key and its certificate in PEM, checked against the device id.

    Raises:
        ConfigError: a file is missing or unreadable, the key is not P-256, or the
            certificate's CN is not the configured device id.
    """
    try:
        key = load_pem_private_key(config.tls.key.read_bytes(), password=None)
        cert_pem = config.tls.cert.read_text()
    except OSError as exc:
        raise ConfigError(f"tls: cannot read {exc.filename}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"tls.key {str(config.tls.key)!r} is not a PEM private key") from exc
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
        raise ConfigError(f"tls.key {str(config.tls.key)!r} must be an ECDSA P-256 key")
    cert = load_pem_x509_certificate(cert_pem.encode())
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if cn != config.device:
        raise ConfigError(
            f"device {config.device!r} does not match the certificate's CN {cn!r} "
            f"in {str(config.tls.cert)!r}: device id, CN, client id and topic must be the same"
        )
    if cert.public_key() != key.public_key():
        raise ConfigError(f"tls.key does not belong to the certificate {str(config.tls.cert)!r}")
    return key, cert_pem
