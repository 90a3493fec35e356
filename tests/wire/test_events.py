"""Typed events: the body round trip, and bounded, typed parsing of whatever a device sends."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvoy.wire import body
from canvoy.wire.errors import MalformedError
from canvoy.wire.events import (
    AgentEvent,
    DtcEvent,
    Event,
    TriggerEvent,
    events_content,
    parse_events,
    to_map,
)

_text = st.text(max_size=40)
_ms = st.integers(0, 2**62)
_episode = st.text("0123456789abcdef", min_size=16, max_size=16)
_frame = st.dictionaries(
    _text,
    st.lists(st.tuples(_ms, st.integers(-(2**63), 2**63 - 1) | _text).map(list), max_size=3),
    max_size=3,
)
_dtc = st.builds(
    DtcEvent,
    t_ms=_ms,
    code=_text,
    state=st.sampled_from(["set", "update", "clear"]),
    source=st.sampled_from(["dbc", "lamp", "obd", "j1939"]),
    signal=_text,
    episode=st.none() | _episode,
    odometer_km=st.none() | st.floats(0, 1e7),
    freeze_frame=st.none() | _frame,
    spn=st.none() | st.integers(0, 2**19),
    dtc_status=st.none() | st.lists(st.sampled_from(["stored", "pending"]), max_size=2),
)
_trigger = st.builds(
    TriggerEvent,
    t_ms=_ms,
    name=_text,
    state=st.sampled_from(["set", "update", "clear"]),
    condition=_text,
    episode=st.none() | _episode,
)
_agent = st.builds(AgentEvent, t_ms=_ms, what=_text, detail=_text)


@given(st.lists(_dtc | _trigger | _agent, max_size=5))
def test_events_survive_the_body_round_trip(events: list[Event]) -> None:
    encoding, data = body.encode(events_content(events))
    assert parse_events(body.decode(encoding, data)) == events


@given(
    st.dictionaries(
        st.sampled_from(["type", "t_ms", "code", "state", "episode", "x"]),
        st.none() | st.integers() | st.text() | st.lists(st.integers()),
    )
)
def test_any_map_is_an_event_or_a_malformed_error(raw: dict[str, Any]) -> None:
    with contextlib.suppress(MalformedError):  # anything else fails the test
        parse_events({"events": [raw]})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"type": "dtc", "t_ms": 1, "code": "P0217", "state": "open"}, "'state' is invalid"),
        ({"type": "dtc", "t_ms": 1, "code": "P0217", "state": "set"}, "missing"),
        (
            {
                "type": "trigger",
                "t_ms": 1,
                "name": "x",
                "state": "set",
                "condition": "",
                "episode": "E1",
            },
            "'episode' is invalid",
        ),
        ({"type": "dtc", "t_ms": True}, "'t_ms' is invalid"),
        ({"type": "ticket", "t_ms": 1}, "unknown type"),
    ],
)
def test_malformed_events_name_the_field(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        parse_events({"events": [raw]})


def test_none_fields_are_left_out_of_the_map() -> None:
    event = TriggerEvent(t_ms=5, name="hot", state="set", condition="x > 1", episode="0" * 16)
    assert to_map(event) == {
        "type": "trigger",
        "t_ms": 5,
        "name": "hot",
        "state": "set",
        "condition": "x > 1",
        "episode": "0" * 16,
    }
