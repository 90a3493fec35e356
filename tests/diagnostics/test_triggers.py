"""Trigger conditions: a safe grammar, hold times, set/clear and freeze frames."""

from __future__ import annotations

from typing import Any

import pytest

from canvoy.agent.collect import Sample
from canvoy.agent.episodes import Episode, EpisodeTracker
from canvoy.agent.triggers import TriggerConfig, TriggerWatcher, parse_condition
from canvoy.errors import ConfigError
from canvoy.wire.events import MAX_FREEZE_SAMPLES, events_content, parse_events


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


def _watcher(*configs: TriggerConfig, **kwargs: Any) -> tuple[TriggerWatcher, list[Any]]:
    events: list[Any] = []
    tracker = EpisodeTracker(lambda batch, _changes: events.extend(batch), **kwargs)
    return TriggerWatcher(configs, tracker, lambda: {"odometer_km": 12.5}), events


def test_hold_time_freeze_frame_and_clear() -> None:
    config = TriggerConfig(
        name="coolant_overtemp",
        when="CoolantTemp > 110 for 5 s",
        freeze_frame=("CoolantTemp", "EngineSpeed"),
        before_s=3,
        after_s=2,
    )
    watcher, events = _watcher(config)
    for i in range(40):  # one sample a second; above 110 from t=10 to t=29
        t = 1000.0 + i
        watcher.observe(Sample(t, "pt/ENGINE_1/EngineSpeed", 2000 + i))
        watcher.observe(Sample(t, "pt/ENGINE_2/CoolantTemp", 120 if 10 <= i < 30 else 90))
    set_event, frame_event, clear_event = events
    assert (set_event.state, set_event.t_ms) == ("set", 1_015_000)  # held 5 s from t=10
    assert set_event.odometer_km == 12.5
    assert frame_event.state == "update"  # the freeze frame, once "after_s" has passed
    frame = frame_event.freeze_frame
    assert [t for t, _v in frame["CoolantTemp"]] == [1_012_000 + 1000 * k for k in range(6)]
    assert frame["EngineSpeed"][0] == [1_012_000, 2012]
    assert (clear_event.state, clear_event.t_ms) == ("clear", 1_030_000)
    assert set_event.episode == frame_event.episode == clear_event.episode is not None


def test_a_clear_before_the_frame_is_complete_sends_the_frame_first() -> None:
    config = TriggerConfig(name="hot", when="x > 1", freeze_frame=("x",), before_s=1, after_s=10)
    watcher, events = _watcher(config)
    for i, v in enumerate([0, 2, 2, 0]):
        watcher.observe(Sample(float(i), "bus/M/x", v))
    assert [e.state for e in events] == ["set", "update", "clear"]
    assert events[1].freeze_frame == {"x": [[0, 0], [1000, 2], [2000, 2], [3000, 0]]}


def test_a_condition_on_an_unchanged_signal_fires_when_its_hold_time_has_passed() -> None:
    # On change, the coolant is sampled once; the engine speed moving tells the time.
    watcher, events = _watcher(TriggerConfig(name="hot", when="CoolantTemp > 110 for 5 s"))
    watcher.observe(Sample(0.0, "pt/ENGINE_2/CoolantTemp", 120))
    for i in range(1, 8):
        watcher.observe(Sample(float(i), "pt/ENGINE_1/EngineSpeed", 2000 + i))
    assert [(e.state, e.t_ms) for e in events] == [("set", 5000)]


def test_a_condition_that_drops_before_the_hold_never_fires() -> None:
    watcher, events = _watcher(TriggerConfig(name="t", when="x > 1 for 500 ms"))
    for i, v in enumerate([2, 2, 0, 2, 0]):
        watcher.observe(Sample(i * 0.3, "bus/M/x", v))
    watcher.flush()
    assert events == []


@pytest.mark.parametrize(("value", "states"), [(5, []), (0, ["clear"])])
def test_after_a_restart_a_trigger_still_holding_continues_its_episode(
    value: int, states: list[str]
) -> None:
    restored = Episode(
        id="00112233aabbccdd", source="trigger", scope="trigger:t", key="t", code="t"
    )
    config = TriggerConfig(name="t", when="x > 1 for 5 s")
    watcher, events = _watcher(config, restored=[restored])
    watcher.observe(Sample(1.0, "bus/M/x", value))  # no hold time for an episode already open
    assert [e.state for e in events] == states
    assert all(e.episode == restored.id for e in events)


def test_a_freeze_frame_of_a_fast_signal_stays_within_the_protocol_bound() -> None:
    config = TriggerConfig(name="fast", when="x > 1", freeze_frame=("x",), before_s=0, after_s=20)
    watcher, events = _watcher(config)
    for i in range(25_000):  # 1 kHz for 25 s
        watcher.observe(Sample(i / 1000, "bus/M/x", 2))
    update = next(e for e in events if e.state == "update")
    samples = update.freeze_frame["x"]
    assert len(samples) <= MAX_FREEZE_SAMPLES and samples[0][0] == 0
    assert parse_events(events_content([update]))  # a bridge accepts it


@pytest.mark.parametrize(
    ("name", "when"), [("x" * 300, "a > 1"), ("long", "a > 1 and " * 40 + "b > 1")]
)
def test_names_and_conditions_beyond_the_protocol_bound_are_config_errors(
    name: str, when: str
) -> None:
    with pytest.raises(ConfigError, match="must be 1-256 characters"):
        TriggerConfig(name=name, when=when)
