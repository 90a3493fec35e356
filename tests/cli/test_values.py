"""Values at their signal's resolution (``canvoy tail``, ``canvoy decode``): no float noise."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvoy.commands.decode import patterns
from canvoy.commands.values import decimals, rounded, text


@pytest.mark.parametrize(
    ("scale", "offset", "want"),
    [
        (0.1, 0, 1),
        (0.05, -40, 2),
        (1, 0, 0),
        (0.25, 0, 2),
        (1, 0.5, 1),
        (1 / 3, 0, None),
        (1e-12, 0, None),
        (math.inf, 0, None),
        (0.001, 0, 3),
    ],
)
def test_decimals_of_a_scale(scale: float, offset: float, want: int | None) -> None:
    assert decimals(scale, offset) == want


@pytest.mark.parametrize(
    ("value", "places", "want"),
    [
        (421956 * 0.1, 1, "42195.6"),
        (421956 * 0.1, None, "42195.6"),
        (0.1 + 0.2, None, "0.3"),
        (90.0, 0, "90"),
        (3, None, "3"),
        ("Drive", None, "Drive"),
        (math.nan, 1, "nan"),
        (-39.0, 0, "-39"),
    ],
)
def test_text(value: object, places: int | None, want: str) -> None:
    assert text(value, places) == want


@given(st.integers(-(2**31), 2**31), st.sampled_from([0.1, 0.01, 0.05, 0.25, 0.001, 0.5]))
def test_a_scaled_raw_value_prints_as_its_decimal(raw: int, scale: float) -> None:
    """raw * scale + offset printed at the scale's decimals is the exact decimal value."""
    places = decimals(scale)
    assert places is not None
    shown = text(raw * scale, places)
    exact = f"{raw * round(scale * 10**places)}"
    # the decimal string of raw * scale, e.g. 421956 * 0.1 -> 42195.6
    sign, digits = ("-", exact[1:]) if exact.startswith("-") else ("", exact)
    digits = digits.rjust(places + 1, "0")
    want = f"{sign}{digits[:-places] or '0'}.{digits[-places:]}" if places else exact
    assert float(shown) == float(want)
    assert len(shown.split(".")[-1]) <= max(places, 1)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_rounding_without_a_database_stays_close(value: float) -> None:
    shown = rounded(value)
    assert isinstance(shown, float)
    assert shown == pytest.approx(value, rel=1e-14, abs=0)


globs = st.text(
    alphabet=st.characters(blacklist_characters=",", blacklist_categories=["Zs", "Cc"]),
    min_size=1,
    max_size=12,
)


@given(st.lists(st.lists(globs, min_size=1, max_size=4), min_size=1, max_size=3))
def test_signal_globs_comma_separated_or_repeated_read_back(groups: list[list[str]]) -> None:
    """`--signals a,b --signals c` is the globs a, b and c, in order."""
    flat = [g.strip() for group in groups for g in group if g.strip()]
    assert patterns([",".join(group) for group in groups]) == flat
    assert patterns([", ".join(group) + "," for group in groups]) == flat
