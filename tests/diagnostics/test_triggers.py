"""Trigger conditions: a safe grammar, hold times, set/clear and freeze frames."""

from __future__ import annotations

from typing import Any

import pytest

from canvoy.agent.collect import Sample
from canvoy.agent.triggers import TriggerConfig, TriggerWatcher, parse_condition
from canvoy.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "values", "holds"),
    [
        ("CoolantTemp > 110", {"CoolantTemp": 111}, True),
        ("CoolantTemp > 110", {"CoolantTemp": 110}, False),
        (
            "ENGINE_2.CoolantTemp >= 110 and not VehicleSpeed == 0",
            {"ENGINE_2/CoolantTemp": 110, "VehicleSpeed": 3},
            True,
        ),
        ("(a < 1 or b > 2) and c != 'Off'", {"a": 5, "b": 3, "c": "On"}, True),
        ("10 < x <= 20", {"x": 20}, True),
        ("x > -5", {"x": -4}, True),
        ("missing > 1", {}, False),
    ],
)
def test_conditions(text: str, values: dict[str, Any], holds: bool) -> None:
    assert parse_condition(text).evaluate(values) is holds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os').system('x') > 1", "not allowed"),
        ("x.__class__ > 1 and y()", "not allowed"),
        ("x + 1 > 2", "not allowed"),
        ("x >", "does not parse"),
        ("1 > 2", "names no signal"),
        ("x in [1]", "comparisons are"),
    ],
)
def test_anything_but_the_grammar_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_condition(text)


def test_hold_time_freeze_frame_and_clear() -> None:
    events: list[dict[str, Any]] = []

    def emit(batch: list[Any]) -> int:
        events.extend(batch)
        return 40 + len(events)

    config = TriggerConfig(
        name="coolant_overtemp",
        when="CoolantTemp > 110 for 5 s",
        freeze_frame=("CoolantTemp", "EngineSpeed"),
        before_s=3,
        after_s=2,
    )
    watcher = TriggerWatcher((config,), emit, lambda: {"odometer_km": 12.5})
    for i in range(40):  # one sample a second; above 110 from t=10 to t=29
        t = 1000.0 + i
        watcher.observe(Sample(t, "pt/ENGINE_1/EngineSpeed", 2000 + i))
        watcher.observe(Sample(t, "pt/ENGINE_2/CoolantTemp", 120 if 10 <= i < 30 else 90))
    set_event, clear_event = events
    assert (set_event["state"], set_event["t_ms"]) == ("set", 1_015_000)  # held 5 s from t=10
    frame = set_event["freeze_frame"]
    assert [t for t, _v in frame["CoolantTemp"]] == [1_012_000 + 1000 * k for k in range(6)]
    assert frame["EngineSpeed"][0] == [1_012_000, 2012]
    assert set_event["odometer_km"] == 12.5
    assert (clear_event["state"], clear_event["t_ms"]) == ("clear", 1_030_000)
    assert clear_event["opened_seq"] == 41  # the envelope that opened the episode


def test_a_condition_that_drops_before_the_hold_never_fires() -> None:
    events: list[Any] = []

    def emit(batch: list[Any]) -> None:
        events.extend(batch)

    watcher = TriggerWatcher((TriggerConfig(name="t", when="x > 1 for 500 ms"),), emit)
    for i, v in enumerate([2, 2, 0, 2, 0]):
        watcher.observe(Sample(i * 0.3, "bus/M/x", v))
    watcher.flush()
    assert events == []
