"""Failures stay where they happen: random frames, failing listeners, failing downstream."""

from __future__ import annotations

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.agent.collect import Collector, Sample
from canvoy.agent.policy import load_policy
from canvoy.agent.source import BusSupervisor
from tests.agent.test_collect import INDEX
from tests.waiting import wait_for

KNOWN_IDS = (0x100, 0x200, 0x300, 0x400, 0x500, 0x100 | 0x80000000)


@st.composite
def frames(draw: st.DrawFn) -> can.Message:
    """Any frame a bus can deliver: known and unknown ids, any length, FD, error, remote."""
    kind = draw(st.sampled_from(["data", "data", "data", "fd", "error", "remote"]))
    extended = draw(st.booleans())
    known = draw(st.sampled_from(KNOWN_IDS))
    arbitration = draw(
        st.one_of(
            st.just(known & 0x1FFFFFFF),
            st.integers(0, 0x1FFFFFFF if extended else 0x7FF),
        )
    )
    if known & 0x80000000 and arbitration == known & 0x1FFFFFFF:
        extended = True
    size = 64 if kind == "fd" else 8
    data = draw(st.binary(max_size=size)) if kind != "remote" else b""
    return can.Message(
        timestamp=draw(st.floats(0, 2e9, allow_nan=False)),
        arbitration_id=arbitration if extended else arbitration & 0x7FF,
        is_extended_id=extended,
        is_fd=kind == "fd",
        is_error_frame=kind == "error",
        is_remote_frame=kind == "remote",
        dlc=draw(st.integers(0, 8)) if kind == "remote" else len(data),
        data=data,
        check=False,
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(frames(), max_size=60))
def test_random_frames_through_the_collector_are_all_counted(batch: list[can.Message]) -> None:
    samples: list[Sample] = []
    collector = Collector(bus="pt", index=INDEX, policy=load_policy(None), emit=samples.append)
    for msg in batch:
        collector.on_message_received(msg)
    s = collector.stats
    assert collector.faults.count == 0, collector.faults.last
    assert s.frames == len(batch)
    # A frame of a multi-frame transfer is counted as transport; the message it completes
    # (reassembled) is then counted like any frame's.
    assert (
        s.decoded
        + s.repeated
        + s.unknown_frames
        + s.malformed
        + s.error_frames
        + s.remote_frames
        + s.transport
        == s.frames + s.reassembled
    )
    assert all(isinstance(v, int | float | str) for _t, _k, v in samples)


def test_a_failing_downstream_skips_the_frame_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def emit(_sample: Sample) -> None:
        raise RuntimeError("batcher exploded")

    collector = Collector(bus="pt", index=INDEX, policy=load_policy(None), emit=emit)
    data = bytes([0x40, 0x1F, 120, 3, 0, 0, 0, 0])
    for i in range(5):
        msg = can.Message(timestamp=i, arbitration_id=0x100, is_extended_id=False, data=data)
        collector.on_message_received(msg)
    assert collector.faults.count == 5
    assert "batcher exploded" in collector.faults.last
    lines = [r for r in caplog.records if "a frame was skipped" in r.getMessage()]
    assert len(lines) == 1, "failures are logged at most once per interval"


class _Raising(can.Listener):
    def __init__(self) -> None:
        self.seen = 0

    def on_message_received(self, msg: can.Message) -> None:
        self.seen += 1
        raise ValueError(f"cannot handle frame {msg.arbitration_id:#x}")


def test_a_listener_error_is_counted_and_does_not_reopen_the_bus() -> None:
    channel = "canvoy-test-listener-error"
    listener = _Raising()
    supervisor = BusSupervisor(
        "pt", listener, lambda: can.Bus(interface="virtual", channel=channel)
    )
    supervisor.start()
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        wait_for(lambda: supervisor.bus is not None, what="the bus to open")
        for i in range(20):
            sender.send(can.Message(arbitration_id=i, data=b"\x01", is_extended_id=False))
        wait_for(lambda: listener.seen == 20, what="every frame")
        wait_for(lambda: supervisor.listener_faults.count == 20, what="every failure counted")
    finally:
        supervisor.stop()
        sender.shutdown()
    assert supervisor.reopens == 0 and supervisor.open_failures == 0
