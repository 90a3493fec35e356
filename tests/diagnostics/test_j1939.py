"""J1939 transport protocol on a real truck log, and DM1 single-frame and multi-packet."""

from __future__ import annotations

import pytest

from canvoy.agent.episodes import EpisodeTracker
from canvoy.agent.j1939 import PGN_DM1, Dm1Watcher, Reassembler, parse_dm1
from canvoy.agent.source import read_log
from canvoy.simulator.j1939 import dm1_frames
from canvoy.wire.events import DtcEvent
from tests.conftest import SHARED_DATA

TP_LOG = SHARED_DATA / "j1939_tp_00000001.log"


@pytest.mark.skipif(not TP_LOG.exists(), reason=f"real J1939 TP log not present: {TP_LOG}")
def test_bam_messages_of_a_real_truck_log_are_reassembled() -> None:
    frames = list(read_log(TP_LOG))
    announced = [f for f in frames if f.arbitration_id & 0x03FF0000 == 0x00EC0000]
    reassembler = Reassembler()
    done = [r for f in frames if (r := reassembler.feed(f)) is not None]
    assert announced and len(done) == len(announced) - reassembler.stats.timed_out
    # The engine (address 0) broadcasts engine configuration 1 (PGN 65251) and vehicle
    # identification (PGN 65260), 28 bytes each.
    assert {(pgn, source, len(payload)) for pgn, source, payload in done} == {
        (65251, 0x00, 28),
        (65260, 0x00, 28),
    }
    assert sum(1 for pgn, _s, _p in done if pgn == 65260) == 3
    vin = next(p for pgn, _s, p in done if pgn == 65260)[:17]
    assert vin.isalnum() and vin.isascii()  # a 17-character VIN opens the field
    first_dt = [bytes(f.data) for f in frames if f.arbitration_id == 0x1CEBFF00][:4]
    assert done[0][2] == b"".join(d[1:] for d in first_dt)[:28]


def test_dm1_single_frame_and_bam_give_set_and_clear_events() -> None:
    events: list[DtcEvent] = []
    tracker = EpisodeTracker(lambda batch, _changes: events.extend(batch))  # type: ignore[arg-type]
    watcher = Dm1Watcher("truck", tracker)
    for f in dm1_frames([(110, 0, 3)], source=0x00, t=1.0, amber=1):
        watcher.on_message_received(f)
    assert [(e.code, e.state) for e in events] == [("SPN110-FMI0", "set")]
    # Two more codes: now a BAM multi-packet DM1.
    frames = dm1_frames([(110, 0, 3), (523000, 31, 1), (100, 1, 7)], source=0x00, t=2.0)
    assert len(frames) > 2
    for f in frames:
        watcher.on_message_received(f)
    assert [(e.code, e.state) for e in events[1:]] == [
        ("SPN523000-FMI31", "set"),
        ("SPN100-FMI1", "set"),
    ]
    assert watcher.reassembler.stats.completed == 1
    for f in dm1_frames([], source=0x00, t=3.0):
        watcher.on_message_received(f)
    assert sorted(e.code for e in events if e.state == "clear") == [
        "SPN100-FMI1",
        "SPN110-FMI0",
        "SPN523000-FMI31",
    ]
    # Every clear names the episode its set opened.
    opened = {e.code: e.episode for e in events if e.state == "set"}
    assert {e.code: e.episode for e in events if e.state == "clear"} == opened


def test_a_new_fmi_or_occurrence_count_updates_the_episode() -> None:
    events: list[DtcEvent] = []
    tracker = EpisodeTracker(lambda batch, _changes: events.extend(batch))  # type: ignore[arg-type]
    watcher = Dm1Watcher("truck", tracker)
    for t, (fmi, count) in enumerate([(0, 1), (0, 1), (0, 2), (3, 2)]):
        for f in dm1_frames([(110, fmi, count)], source=0x00, t=float(t)):
            watcher.on_message_received(f)
    assert [(e.state, e.code, e.occurrences) for e in events] == [
        ("set", "SPN110-FMI0", 1),
        ("update", "SPN110-FMI0", 2),
        ("update", "SPN110-FMI3", 2),
    ]
    assert len({e.episode for e in events}) == 1


def test_dm1_fields_follow_j1939_73() -> None:
    lamps, codes = parse_dm1(bytes([0b01000100, 0xFF, 0x6E, 0x00, 0x04, 0x83, 0xFF, 0xFF]))
    assert lamps["mil"] == 1 and lamps["amber_warning"] == 1
    assert [(c.spn, c.fmi, c.occurrences) for c in codes] == [(110, 4, 3)]
    assert PGN_DM1 == 65226
