"""Diagnostic trouble codes in the SAE J2012 / ISO 15031-6 two-byte form (``P0217``)."""

from __future__ import annotations

import re

from canvoy.errors import ConfigError

SYSTEMS = "PCBU"  # powertrain, chassis, body, network
DTC_PATTERN = re.compile(r"[PCBU][0-3][0-9A-F]{3}")


def encode_dtc(code: str) -> int:
    """``P0217`` -> 0x0217; the two top bits carry the system letter.

    Raises:
        ConfigError: ``code`` is not a five-character DTC.
    """
    if DTC_PATTERN.fullmatch(code) is None:
        raise ConfigError(f"DTC {code!r} is invalid: use a letter P, C, B or U and 4 hex digits")
    return (SYSTEMS.index(code[0]) << 14) | int(code[1:], 16)


def decode_dtc(value: int) -> str | None:
    """0x0217 -> ``P0217``; None for 0 (no code)."""
    if value == 0:
        return None
    return f"{SYSTEMS[(value >> 14) & 3]}{value & 0x3FFF:04X}"
