"""The collection policy: which signals, how often, and what the owner consented to.

The policy is its own YAML file (the data collection agreement); its hash travels in every
batch so the cloud knows which agreement the data was collected under. See docs/POLICY.md.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from canvoy.agent.database import is_integrity_signal
from canvoy.config import build, read_yaml
from canvoy.errors import ConfigError

LOCATION = "location"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """How often one signal is reported."""

    min_interval_s: float = 0.0
    on_change: bool = True
    deadband: float = 0.0
    heartbeat_s: float = 30.0  # 0 = never report an unchanged value again

    def __post_init__(self) -> None:
        _check_rates(self.min_interval_s, self.deadband, self.heartbeat_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Rate settings for the signals whose ``bus/message/signal`` path matches ``match``."""

    match: str
    min_interval_s: float | None = None
    on_change: bool | None = None
    deadband: float | None = None
    heartbeat_s: float | None = None

    def __post_init__(self) -> None:
        # Checked here, at load, not when the first matching frame arrives.
        if not self.match:
            raise ConfigError("must not be empty: a glob over bus/message/signal", key="match")
        _check_rates(self.min_interval_s, self.deadband, self.heartbeat_s)


def _check_rates(
    min_interval_s: float | None, deadband: float | None, heartbeat_s: float | None
) -> None:
    """The one rule for rate values, in the defaults and in every rule.

    Raises:
        ConfigError: a value is negative or not finite (naming its key).
    """
    for name, value in (
        ("min_interval_s", min_interval_s),
        ("deadband", deadband),
        ("heartbeat_s", heartbeat_s),
    ):
        if value is not None and not 0 <= value < math.inf:
            hint = " (0 never repeats an unchanged value)" if name == "heartbeat_s" else ""
            raise ConfigError(f"must be >= 0 and finite, got {value}{hint}", key=name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Collect:
    """Which signals are collected at all (globs over ``bus/message/signal``)."""

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    integrity_signals: bool = False  # rolling counters and checksums


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """The policy file as written."""

    version: int = 1
    collect: Collect = field(default_factory=Collect)
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)
    location_decimals: int | None = None
    defaults: Rate = field(default_factory=Rate)
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        if self.version != 1:
            raise ConfigError(f"version {self.version} is not supported: use 1")
        missing = sorted(set(self.classes) - set(self.consent))
        if missing:
            raise ConfigError(
                f"consent: no answer for class(es) {', '.join(missing)}: add 'name: true|false'"
            )
        if self.location_decimals is not None and not 0 <= self.location_decimals <= 8:
            raise ConfigError("location_decimals must be 0-8 or null")


@dataclass(frozen=True, slots=True)
class SignalPlan:
    """What the policy decided for one signal of one message."""

    name: str
    path: str
    rate: Rate
    decimals: int | None


class Policy:
    """A loaded policy: decides per signal, once, and is identified by ``hash``."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        canonical = json.dumps(asdict(config), sort_keys=True, separators=(",", ":"))
        self.hash = hashlib.sha256(canonical.encode()).hexdigest()

    def privacy_class(self, path: str) -> str | None:
        """The first privacy class whose patterns match ``path``."""
        for name, patterns in self.config.classes.items():
            if any(fnmatch.fnmatchcase(path, p) for p in patterns):
                return name
        return None

    def plan(self, path: str) -> SignalPlan | None:
        """The plan for ``bus/message/signal``, or None when it is not collected."""
        c = self.config.collect
        if not any(fnmatch.fnmatchcase(path, p) for p in c.include):
            return None
        if any(fnmatch.fnmatchcase(path, p) for p in c.exclude):
            return None
        if not c.integrity_signals and is_integrity_signal(path.rsplit("/", 1)[-1]):
            return None
        klass = self.privacy_class(path)
        if klass is not None and not self.config.consent.get(klass, False):
            return None
        rate = self.config.defaults
        for rule in self.config.rules:
            if fnmatch.fnmatchcase(path, rule.match):
                rate = Rate(
                    min_interval_s=_pick(rule.min_interval_s, rate.min_interval_s),
                    on_change=rule.on_change if rule.on_change is not None else rate.on_change,
                    deadband=_pick(rule.deadband, rate.deadband),
                    heartbeat_s=_pick(rule.heartbeat_s, rate.heartbeat_s),
                )
                break
        decimals = self.config.location_decimals if klass == LOCATION else None
        return SignalPlan(path.rsplit("/", 1)[-1], path, rate, decimals)


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def load_policy(path: Path | None) -> Policy:
    """Load a policy file; None gives the default policy (everything but counters).

    Raises:
        ConfigError: the file is missing, is not YAML, or has an unknown or invalid key.
    """
    if path is None:
        return Policy(PolicyConfig())
    data = read_yaml(Path(path), "policy")
    try:
        return Policy(build(PolicyConfig, data, "policy"))
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {str(path)!r})") from exc
