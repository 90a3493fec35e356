"""The bridge config file (bridge.yaml): identity, broker, verification, sinks and routes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canvoy.bridge.tickets import ServiceRule
from canvoy.config import build, read_yaml
from canvoy.errors import ConfigError
from canvoy.metrics import BridgeMetricsConfig
from canvoy.wire.ids import check_id
from canvoy.wire.tls import TlsFiles

ROUTABLE = ("telemetry", "events", "status", "tickets")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerAddress:
    """Where the broker is."""

    host: str = "localhost"
    port: int = 8883
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if not self.host.strip():
            raise ConfigError("broker.host: give the broker's host name or address")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"broker.port: {self.port} is not a TCP port (1..65535)")
        if not 5 <= self.keepalive_s <= 65535:
            raise ConfigError(f"broker.keepalive_s: {self.keepalive_s} must be 5..65535 seconds")


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConfig:
    """Everything ``canvoy bridge run`` needs; see docs/CONFIG.md."""

    name: str
    tls: TlsFiles
    broker: BrokerAddress = field(default_factory=BrokerAddress)
    crl: Path | None = None
    known_devices: Path | None = None
    group: str = "canvoy"
    session_expiry_s: int = 86400
    receive_maximum: int = 1000
    hold_unknown_s: float = 10.0
    replay_window: int = 100_000
    batch_max: int = 500
    batch_max_bytes: int = 1024 * 1024  # payload bytes per batch: bounds the records held at once
    verify_workers: int | None = None  # verifying processes; None: one per core (<= 4)
    quarantine: Path = Path("quarantine.jsonl")
    status_file: Path | None = None
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    service_rules: tuple[ServiceRule, ...] = ()
    receipts: bool = True
    metrics: BridgeMetricsConfig = field(default_factory=BridgeMetricsConfig)
    confirm_interval_s: float = 1.0

    def __post_init__(self) -> None:
        check_id(self.name)
        check_id(self.group)
        for kind, names in self.routes.items():
            if kind not in ROUTABLE:
                raise ConfigError(f"routes.{kind}: unknown kind, use one of {ROUTABLE}")
            for name in names:
                if name not in self.sinks:
                    raise ConfigError(f"routes.{kind}: sink {name!r} is not defined under sinks")
        for name, options in self.sinks.items():
            if not isinstance(options, dict) or "type" not in options:
                raise ConfigError(f"sinks.{name}: give a 'type' (jsonl, webhook, mqtt, nats)")
        if not 1 <= self.receive_maximum <= 65535:
            raise ConfigError("receive_maximum must be 1..65535")
        if self.verify_workers is not None and self.verify_workers < 0:
            raise ConfigError("verify_workers: must be >= 0 (0 verifies in the main process)")
        if self.hold_unknown_s < 0 or self.session_expiry_s < 0:
            raise ConfigError("hold_unknown_s and session_expiry_s: must be >= 0")
        if self.batch_max < 1 or self.batch_max_bytes < 131072:
            raise ConfigError("batch_max must be >= 1 and batch_max_bytes >= 131072")
        if not 0.05 <= self.confirm_interval_s <= 60:
            raise ConfigError(
                f"confirm_interval_s: {self.confirm_interval_s} must be 0.05..60 seconds"
            )
        if self.replay_window < 1000:
            raise ConfigError("replay_window must be >= 1000 sequence numbers")


_PATH_OPTIONS = ("path", "secret_file", "dead_letter")


def load_config(path: Path) -> BridgeConfig:
    """Read ``bridge.yaml``; relative paths are relative to the file's directory.

    Raises:
        ConfigError: missing, not YAML, or an unknown or invalid key (named by its path).
    """
    data = read_yaml(path, "bridge config")
    config = build(BridgeConfig, data)
    base = path.resolve().parent
    sinks = {
        name: {
            k: (str(base / v) if k in _PATH_OPTIONS and isinstance(v, str) else v)
            for k, v in options.items()
        }
        for name, options in config.sinks.items()
    }
    known = base / config.known_devices if config.known_devices else None
    if known is not None and not known.is_dir():
        raise ConfigError(f"known_devices: {known} is not a directory of device certificates")
    if (base / config.quarantine).is_dir():
        raise ConfigError(f"quarantine: {base / config.quarantine} is a directory; name a file")
    return dataclasses.replace(
        config,
        tls=config.tls.resolve(base),
        crl=base / config.crl if config.crl else None,
        known_devices=known,
        quarantine=base / config.quarantine,
        status_file=base / config.status_file if config.status_file else None,
        sinks=sinks,
    )
