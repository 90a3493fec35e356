"""Decoding only the changed signals reports exactly what decoding the whole message does."""

from __future__ import annotations

import random
from itertools import islice

import can
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.agent import collect
from canvoy.agent.collect import Collector, Sample
from canvoy.agent.database import Index, build_index, load_databases
from canvoy.agent.policy import Policy, PolicyConfig, load_policy
from canvoy.agent.source import read_log
from canvoy.config import build
from tests.agent.test_collect import INDEX
from tests.agent.test_decode import J1939_DBC, TRUCK_LOG, needs_shared

# Standard, Motorola, multiplexed, FD (64 bytes) and location messages of test_vehicle.dbc.
IDS = {0x100: 8, 0x200: 8, 0x300: 8, 0x400: 64, 0x500: 8}
BYTES = st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF])  # few values: repeats and changes


@st.composite
def drives(draw: st.DrawFn) -> list[can.Message]:
    """Frames of known ids at rising times, with payloads that often repeat in part."""
    t = 0.0
    frames = []
    for _ in range(draw(st.integers(1, 120))):
        t += draw(st.sampled_from([0.0, 0.01, 0.1, 0.4, 1.0, 3.5]))
        frame_id = draw(st.sampled_from(sorted(IDS)))
        size = IDS[frame_id]
        data = bytes(draw(st.lists(BYTES, min_size=size, max_size=size)))
        if frame_id == 0x300:  # a page the database knows, mostly
            data = bytes([draw(st.sampled_from([0, 1, 1, 7]))]) + data[1:]
        frames.append(
            can.Message(
                timestamp=t,
                arbitration_id=frame_id,
                is_extended_id=False,
                data=data,
                is_fd=size > 8,
            )
        )
    return frames


POLICIES = st.fixed_dictionaries(
    {
        "collect": st.fixed_dictionaries({"integrity_signals": st.booleans()}),
        "classes": st.just({"location": ["*/GNSS/*"]}),
        "consent": st.just({"location": True}),
        "location_decimals": st.sampled_from([None, 2]),
        "defaults": st.fixed_dictionaries(
            {
                "on_change": st.booleans(),
                "min_interval_s": st.sampled_from([0.0, 0.3, 2.0]),
                "deadband": st.sampled_from([0.0, 1.0, 50.0]),
                "heartbeat_s": st.sampled_from([0.0, 0.5, 3.0]),
            }
        ),
        "rules": st.just([{"match": "pt/ENGINE/EngineSpeed", "deadband": 25, "heartbeat_s": 1}]),
    }
)


def _run(
    index: Index, policy: Policy, frames: list[can.Message]
) -> tuple[list[Sample], tuple[int, ...]]:
    out: list[Sample] = []
    collector = Collector(bus="pt", index=index, policy=policy, emit=out.append)
    for msg in frames:
        collector.on_message_received(msg)
    s = collector.stats
    counts = (
        s.frames,
        s.decoded,
        s.repeated,
        s.malformed,
        s.unknown_frames,
        collector.faults.count,
    )
    return out, counts


def _whole_and_selective(
    monkeypatch: pytest.MonkeyPatch, index: Index, policy: Policy, frames: list[can.Message]
) -> tuple[tuple[list[Sample], tuple[int, ...]], tuple[list[Sample], tuple[int, ...]]]:
    selective = _run(index, policy, frames)
    with monkeypatch.context() as patch:
        patch.setattr(collect, "MAX_SELECTIONS", 0)  # no codec for a part: whole decodes only
        whole = _run(index, policy, frames)
    return whole, selective


@settings(max_examples=200, deadline=None)
@given(drives(), POLICIES)
def test_changed_signals_alone_report_what_whole_decodes_report(
    frames: list[can.Message], config: dict[str, object]
) -> None:
    policy = Policy(build(PolicyConfig, yaml.safe_load(yaml.safe_dump(config)), "policy"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        whole, selective = _whole_and_selective(monkeypatch, INDEX, policy, frames)
    assert selective == whole


def test_a_message_in_which_one_signal_moves_decodes_that_signal_alone() -> None:
    out: list[Sample] = []
    collector = Collector(bus="pt", index=INDEX, policy=load_policy(None), emit=out.append)
    for i in range(50):
        data = bytes([i, 0, 120, 3, 0, 0, 0, 0])  # EngineSpeed moves, Coolant and Gear do not
        collector.on_message_received(
            can.Message(timestamp=i * 0.01, arbitration_id=0x100, is_extended_id=False, data=data)
        )
    (entry,) = collector._entries.values()
    assert collector.stats.decoded == 50
    assert [[g.name for g in gates] for gates in entry.selections] == [["EngineSpeed"]]


@needs_shared
def test_the_real_truck_log_reports_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    index = build_index(load_databases([J1939_DBC]))
    frames = list(islice(read_log(TRUCK_LOG), 60_000))
    policy = Policy(
        build(PolicyConfig, {"defaults": {"heartbeat_s": 2.0, "deadband": 0.5}}, "policy")
    )
    whole, selective = _whole_and_selective(monkeypatch, index, policy, frames)
    assert len(whole[0]) > 100
    assert selective == whole


def test_random_payloads_keep_the_remembered_patterns_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(7)
    frames = [
        can.Message(
            timestamp=i * 0.001,
            arbitration_id=frame_id,
            is_extended_id=False,
            data=rng.randbytes(IDS[frame_id]),
            is_fd=IDS[frame_id] > 8,
        )
        for i, frame_id in enumerate([0x100, 0x200, 0x400] * 3000)
    ]
    policy = load_policy(None)
    whole, selective = _whole_and_selective(monkeypatch, INDEX, policy, frames)
    assert selective == whole
    out: list[Sample] = []
    collector = Collector(bus="pt", index=INDEX, policy=policy, emit=out.append)
    for msg in frames:
        collector.on_message_received(msg)
    for entry in collector._entries.values():
        assert len(entry.changes) <= collect.MAX_CHANGES
        assert len(entry.selections) <= collect.MAX_SELECTIONS
    assert max(len(e.changes) for e in collector._entries.values()) == collect.MAX_CHANGES
