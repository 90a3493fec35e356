"""Signal values as people read them: at their signal's resolution, without float noise."""

from __future__ import annotations

import math
from collections.abc import Iterable
from decimal import Decimal

from cantools.database import Database

# Beyond this many decimals a scale (1/3, say) has no exact decimal resolution.
MAX_DECIMALS = 9
# A double holds 15 significant decimal digits exactly; the 16th and 17th are the noise of
# raw * scale + offset (42195.600000000006).
SIGNIFICANT = 15


def decimals(scale: float, offset: float = 0.0) -> int | None:
    """The decimals ``raw * scale + offset`` needs (0.1 -> 1, 0.05 -> 2, 1 -> 0); None when a
    scale has no short exact decimal form (1/3) or is not finite."""
    places = 0
    for number in (scale, offset):
        if not math.isfinite(number):
            return None
        exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
        places = max(places, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
    return places if places <= MAX_DECIMALS else None


def resolutions(databases: Iterable[Database]) -> dict[str, int | None]:
    """``MESSAGE.Signal`` -> the signal's decimals, for every signal of ``databases``."""
    return {
        f"{message.name}.{signal.name}": decimals(float(signal.scale), float(signal.offset))
        for db in databases
        for message in db.messages
        for signal in message.signals
    }


def rounded(value: object, places: int | None = None) -> object:
    """``value`` at ``places`` decimals, or at 15 significant digits when ``places`` is None;
    what is not a float (an int, a choice's name) is returned unchanged."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if places is not None:
        return round(value, places)
    shown = float(f"{value:.{SIGNIFICANT}g}")
    return shown if math.isfinite(shown) else value  # the largest doubles round up to inf


def text(value: object, places: int | None = None) -> str:
    """``value`` as a short string: ``42195.6``, ``3``, ``Drive``."""
    shown = rounded(value, places)
    if isinstance(shown, float) and shown.is_integer() and abs(shown) < 1e15:
        return str(int(shown)) if places == 0 else repr(shown)
    return str(shown)
