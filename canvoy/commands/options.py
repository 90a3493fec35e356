"""The options several subcommands share, spelled and parsed one way: --certs, --broker, --speed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from canvoy.agent.source import Speed, parse_speed
from canvoy.certs import pki
from canvoy.certs.layout import IdentityKind
from canvoy.errors import ConfigError
from canvoy.wire.tls import TlsFiles

DEFAULT_PORT = 8883  # MQTT over TLS (IANA)
BROKER_HELP = (
    f"the MQTT broker, HOST or HOST:PORT ([IPv6]:PORT); the port defaults to {DEFAULT_PORT}"
)


def parse_broker(text: str) -> tuple[str, int]:
    """Split ``HOST[:PORT]``: ``localhost``, ``mq.example.com:8884``, ``[::1]:8883``, ``::1``.

    Raises:
        ConfigError: no host, or a port that is not 1..65535.
    """
    spelled = text.strip()
    if spelled.startswith("["):  # [IPv6] or [IPv6]:PORT
        host, closed, rest = spelled[1:].partition("]")
        port = rest.removeprefix(":") if closed and rest.startswith(":") else ""
        if not closed or (rest and not rest.startswith(":")) or (rest and not port):
            host = ""
    elif spelled.count(":") > 1:  # a bare IPv6 address: no port can follow it unbracketed
        host, port = spelled, ""
    else:
        host, _, port = spelled.partition(":")
        if ":" in spelled and not port:
            host = ""
    number = int(port) if port.isascii() and port.isdigit() else DEFAULT_PORT if not port else 0
    if not host or any(c.isspace() for c in host) or not 1 <= number <= 65535:
        raise ConfigError(
            f"--broker {text!r} must be HOST or HOST:PORT with a port 1-65535, "
            f"e.g. localhost or mq.example.com:{DEFAULT_PORT}"
        )
    return host, number


def add_certs(parser: argparse.ArgumentParser, help_text: str = "the fleet PKI directory") -> None:
    """``--certs DIR``, the same in every subcommand (stored as ``args.certs``)."""
    parser.add_argument("--certs", type=Path, required=True, metavar="DIR", help=help_text)


def add_config(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config FILE``: the ``what`` (agent, bridge) config a subcommand reads."""
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help=f"the {what} config ('canvoy {what} init' writes one)",
    )


def add_broker(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """``--broker HOST[:PORT]``; required unless a ``default`` is given."""
    parser.add_argument(
        "--broker",
        required=default is None,
        default=default,
        metavar="HOST[:PORT]",
        help=BROKER_HELP + (f" (default: {default})" if default else ""),
    )


def replay_speed(text: str) -> Speed:
    """An argparse type for ``--speed``: ``max``, ``realtime`` or ``xN`` (``N`` is ``xN``).

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it and exits 2).
    """
    try:
        return parse_speed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def live_speed(text: str) -> float:
    """An argparse type for a pace on a live bus: ``realtime`` or ``xN`` (``N`` is ``xN``).

    Raises:
        argparse.ArgumentTypeError: ``max`` (a live bus has a pace) or anything invalid.
    """
    speed = replay_speed(text)
    if speed == "max":
        raise argparse.ArgumentTypeError(
            "speed 'max' has no meaning on a live bus: use realtime or xN (e.g. x10)"
        )
    return 1.0 if speed == "realtime" else float(speed)


def config_path(path: Path, config_file: Path) -> str:
    """``path`` as a config file written to ``config_file`` should hold it, quoted for YAML:
    relative to the file's folder when it lies under it (the pair can move together),
    absolute otherwise. Either way the config reader finds it from any working directory."""
    target, folder = path.resolve(), config_file.resolve().parent
    shown = target.relative_to(folder) if target.is_relative_to(folder) else target
    return json.dumps(str(shown))


def add_identity(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--identity operator/NAME``: who a tool connects as (stored as ``args.identity``)."""
    parser.add_argument("--identity", required=True, metavar="operator/NAME", help=help_text)


def identity_files(
    certs: Path, spelled: str, kinds: tuple[IdentityKind, ...] = ("operator",)
) -> tuple[str, TlsFiles]:
    """The name and TLS files of ``--identity KIND/NAME`` in the PKI at ``certs``.

    Raises:
        ConfigError: not ``KIND/NAME`` with one of ``kinds``.
        PKIError: the PKI has no such identity (says what to issue).
    """
    spelled_kind, _, name = spelled.partition("/")
    kind = next((k for k in kinds if k == spelled_kind), None)
    if kind is None or not name:
        raise ConfigError(f"--identity {spelled!r} must be operator/NAME")
    pki.require_identity(certs, kind, name)
    return name, pki.tls_files(certs, kind, name)
