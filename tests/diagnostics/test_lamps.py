"""Warning lamps mapped to event codes: on sets, off clears, repeats are not events."""

from __future__ import annotations

from typing import Any

from canvoy.agent.collect import Sample
from canvoy.agent.diagnostics import DiagnosticsConfig, DtcWatcher
from canvoy.agent.episodes import EpisodeTracker


def test_a_lamp_sets_and_clears_once() -> None:
    events: list[Any] = []
    tracker = EpisodeTracker(lambda batch, _changes: events.extend(batch))
    watcher = DtcWatcher(DiagnosticsConfig(lamps={"*/INSTRUMENT/MilLamp": "MIL"}), tracker)
    for t, v in enumerate([0, 1, 1, 1, 0, 0]):
        watcher.observe(Sample(float(t), "car/INSTRUMENT/Odometer", 100.0 + t))
        watcher.observe(Sample(float(t), "car/INSTRUMENT/MilLamp", v))
    assert [(e.code, e.state, e.source) for e in events] == [
        ("MIL", "set", "lamp"),
        ("MIL", "clear", "lamp"),
    ]
    assert events[0].odometer_km == 101.0
    assert events[0].episode == events[1].episode is not None
