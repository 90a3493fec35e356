"""Frame sources: every python-can log format, bad lines, and live buses that fail."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import can
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvoy.agent.source import BusSupervisor, ReplayStats, paced, parse_speed, read_log
from canvoy.errors import DecodeError
from tests.waiting import wait_for

T0 = 1_700_000_000.0
FRAMES = [
    can.Message(
        timestamp=T0 + i * 0.01,
        arbitration_id=0x100 + i % 5,
        is_extended_id=False,
        data=bytes([i % 256, 1, 2, 3, 4, 5, 6, 7]),
        channel=0,
    )
    for i in range(50)
] + [
    can.Message(
        timestamp=1_700_000_001.0,
        arbitration_id=0x18FEF100,
        is_extended_id=True,
        data=bytes([9, 8, 7]),
        channel=0,
    )
]


def _key(msg: can.Message) -> tuple[object, ...]:
    return (round(msg.timestamp, 4), msg.arbitration_id, msg.is_extended_id, bytes(msg.data))


@pytest.mark.parametrize("suffix", [".asc", ".blf", ".csv", ".log", ".trc", ".db"])
def test_every_log_format_replays_the_same_frames(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"drive{suffix}"
    with can.Logger(str(path)) as logger:
        for msg in FRAMES:
            logger.on_message_received(msg)
    got = list(read_log(path))
    assert [_key(m) for m in got] == [_key(m) for m in FRAMES]


def test_bad_candump_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.log"
    path.write_text(
        "(1.0) can0 123#1122\nGARBAGE LINE\n(2.0) can0 124#33\n(3.0) can0 12X#zz\n"
        "(4.0) can0 125#44\n"
    )
    stats = ReplayStats()
    got = [m.arbitration_id for m in read_log(path, stats)]
    assert got == [0x123, 0x124, 0x125]
    assert stats.bad_lines == 2


def test_unknown_format_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "drive.xyz").write_text("x")
    with pytest.raises(DecodeError, match=r"unknown format '\.xyz'"):
        list(read_log(tmp_path / "drive.xyz"))
    with pytest.raises(DecodeError, match="does not exist"):
        list(read_log(tmp_path / "none.log"))


def test_a_directory_or_a_device_is_not_called_missing(tmp_path: Path) -> None:
    """`canvoy decode --dbc d /dev/null` said the log did not exist."""
    with pytest.raises(DecodeError, match="is a directory: name a log file"):
        list(read_log(tmp_path))
    with pytest.raises(DecodeError, match=r"not a regular file.*standard input.*'-'"):
        list(read_log(Path(os.devnull)))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("max", "max"),
        ("realtime", "realtime"),
        ("x10", 10.0),
        ("10", 10.0),  # the other spelling (sim run's before) means the same
        ("2x", 2.0),
        ("X0.5", 0.5),
        (4, 4.0),  # speed: 4 in YAML
    ],
)
def test_speeds(text: str | float, want: object) -> None:
    assert parse_speed(text) == want


@pytest.mark.parametrize("text", ["fast", "x0", "x-1", "-3", "xinf", "nan", "x", "", "x10x"])
def test_bad_speed_says_what_is_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="use max, realtime or xN"):
        parse_speed(text)


@given(st.text(max_size=12))
def test_any_speed_text_is_a_pace_or_one_clear_error(text: str) -> None:
    try:
        speed = parse_speed(text)
    except ValueError as exc:
        assert "use max, realtime or xN" in str(exc)
        return
    assert speed in ("max", "realtime") or (isinstance(speed, float) and 0 < speed < math.inf)


@given(st.floats(min_value=1e-3, max_value=1e6))
def test_every_factor_reads_back_in_every_spelling(factor: float) -> None:
    for text in (f"x{factor!r}", repr(factor), f"{factor!r}x"):
        assert parse_speed(text) == factor


def test_paced_replay_keeps_order_and_stops_when_asked() -> None:
    stop = threading.Event()
    got = []
    for msg in paced(iter(FRAMES), 1000.0, stop):
        got.append(msg)
        if len(got) == 10:
            stop.set()
    assert got == FRAMES[:10]


class _Sink(can.Listener):
    def __init__(self) -> None:
        self.frames: list[can.Message] = []

    def on_message_received(self, msg: can.Message) -> None:
        self.frames.append(msg)


def test_live_bus_is_read_and_reopened_after_it_fails() -> None:
    channel = "canvoy-test-reopen"
    attempts = {"n": 0}

    def opener() -> can.BusABC:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise can.CanInterfaceNotImplementedError("adapter unplugged")
        return can.Bus(interface="virtual", channel=channel, receive_own_messages=False)

    sink = _Sink()
    supervisor = BusSupervisor("pt", sink, opener, backoff_initial_s=0.05)
    supervisor.start()
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        wait_for(lambda: supervisor.bus is not None, what="bus to open after a failure")
        assert supervisor.open_failures == 1
        sender.send(can.Message(arbitration_id=0x1, data=b"\x01", is_extended_id=False))
        wait_for(lambda: len(sink.frames) == 1, what="first frame")
        failing = supervisor.bus
        assert failing is not None
        failing.shutdown()  # the interface goes away under the notifier
        wait_for(lambda: supervisor.reopens == 1 and supervisor.bus is not None, what="reopen")
        sender.send(can.Message(arbitration_id=0x2, data=b"\x02", is_extended_id=False))
        wait_for(lambda: len(sink.frames) == 2, what="frame after reopen")
    finally:
        supervisor.stop()
        sender.shutdown()
    assert [m.arbitration_id for m in sink.frames] == [0x1, 0x2]


def test_driver_filters_pass_known_ids_and_j1939_pgns_from_any_source() -> None:
    from canvoy.agent.buses import driver_filters
    from canvoy.agent.database import build_index, load_databases
    from tests.agent.test_decode import J1939_DBC, TEST_DBC

    plain = build_index(load_databases([TEST_DBC]))
    channel = "canvoy-test-filters"
    rx = can.Bus(interface="virtual", channel=channel, can_filters=driver_filters(plain))
    tx = can.Bus(interface="virtual", channel=channel)
    try:
        for arb, ext in ((0x100, False), (0x7FF, False), (0x100, True), (0x101, True)):
            tx.send(can.Message(arbitration_id=arb, is_extended_id=ext, data=b"\x00" * 8))
        got = []
        while (msg := rx.recv(0.2)) is not None:
            got.append((msg.arbitration_id, msg.is_extended_id))
        assert got == [(0x100, False), (0x100, True)]
    finally:
        rx.shutdown()
        tx.shutdown()
    if J1939_DBC.is_file():
        j1939 = build_index(load_databases([J1939_DBC]))
        rx = can.Bus(interface="virtual", channel=channel, can_filters=driver_filters(j1939))
        tx = can.Bus(interface="virtual", channel=channel)
        try:
            # EEC1 from source 0x00 and 0x21 pass (the DBC says 0xFE); another PGN does not.
            for arb in (0x0CF00400, 0x0CF00421, 0x18FEF100, 0x18FEEE00):
                tx.send(can.Message(arbitration_id=arb, data=b"\x00" * 8))
            got_ids = []
            while (msg := rx.recv(0.2)) is not None:
                got_ids.append(msg.arbitration_id)
            assert got_ids == [0x0CF00400, 0x0CF00421, 0x18FEF100]
        finally:
            rx.shutdown()
            tx.shutdown()
