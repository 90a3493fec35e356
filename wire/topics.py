"""MQTT topic names of protocol v1: ``canvoy/v1/<device>/<kind>`` and ``fleet/v1/...``."""

from __future__ import annotations

from typing import Literal, get_args

from canvoy.wire.errors import IdentityMismatchError
from canvoy.wire.ids import ID_PATTERN, check_id

Kind = Literal["telemetry", "events", "status", "receipts"]
KINDS: tuple[Kind, ...] = get_args(Kind)
PREFIX = "canvoy/v1"
FLEET_PREFIX = "fleet/v1"


def topic(device: str, kind: Kind) -> str:
    """The device topic for ``kind``, e.g. ``canvoy/v1/car-7/telemetry``.

    Raises:
        InvalidIdentityError: ``device`` is not a valid id.
    """
    return f"{PREFIX}/{check_id(device)}/{kind}"


def fleet_topic(device: str, kind: Kind) -> str:
    """The operator-facing republish topic, e.g. ``fleet/v1/car-7/events``."""
    return f"{FLEET_PREFIX}/{check_id(device)}/{kind}"


def parse_topic(name: str) -> tuple[str, Kind]:
    """Split a device topic into ``(device, kind)``.

    Raises:
        IdentityMismatchError: the topic is not a protocol v1 device topic.
    """
    parts = name.split("/")
    if len(parts) != 4 or "/".join(parts[:2]) != PREFIX:
        raise IdentityMismatchError(f"topic {name!r} is not of the form {PREFIX}/<device>/<kind>")
    device, kind = parts[2], parts[3]
    if ID_PATTERN.fullmatch(device) is None:
        raise IdentityMismatchError(f"topic {name!r} names an invalid device id {device!r}")
    for known in KINDS:
        if kind == known:
            return device, known
    raise IdentityMismatchError(f"topic {name!r} has unknown kind {kind!r}: use one of {KINDS}")
