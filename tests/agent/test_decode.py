"""Database indexing, bit masks, decoding, J1939 PGN matching and the decode statistics."""

from __future__ import annotations

from pathlib import Path

import can
import pytest

from canvoy.agent.database import build_index, load_databases, signal_bits
from canvoy.agent.decode import Decoder
from canvoy.agent.source import read_log
from canvoy.errors import DecodeError
from tests.conftest import SHARED_DATA

DATA = Path(__file__).resolve().parents[1] / "data"
TEST_DBC = DATA / "test_vehicle.dbc"
J1939_DBC = SHARED_DATA / "CSS-Electronics-SAE-J1939-DEMO.dbc"
TRUCK_LOG = SHARED_DATA / "j1939_truck_00000001.log"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} is absent")


def _frame(
    arb: int, data: bytes, *, ext: bool = False, t: float = 0.0, fd: bool = False
) -> can.Message:
    return can.Message(
        timestamp=t, arbitration_id=arb, data=data, is_extended_id=ext, is_fd=fd, channel="can0"
    )


@pytest.mark.parametrize("path", [TEST_DBC, J1939_DBC])
def test_signal_bits_match_what_cantools_encodes(path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    db = load_databases([path])[0]
    checked = 0
    for message in db.messages:
        mux = next((s for s in message.signals if s.is_multiplexer), None)
        for signal in message.signals:
            if signal is mux:
                continue
            # This signal at all-ones raw, everything else (bar its multiplexer value) at zero.
            page = signal.multiplexer_ids[0] if signal.multiplexer_ids else 0
            raw = {
                s.name: 0
                for s in message.signals
                if not s.multiplexer_ids or page in s.multiplexer_ids
            }
            raw[signal.name] = -1 if signal.is_signed else (1 << signal.length) - 1
            if mux is not None:
                raw[mux.name] = page
            encoded = int.from_bytes(message.encode(raw, scaling=False, strict=False), "big")
            if mux is not None:
                encoded &= ~signal_bits(mux, message.length)
            assert encoded == signal_bits(signal, message.length), (message.name, signal.name)
            checked += 1
    assert checked >= 2


def test_standard_and_extended_ids_are_kept_apart() -> None:
    decoder = Decoder(build_index(load_databases([TEST_DBC])))
    std = decoder.decode(_frame(0x100, bytes([0x40, 0x1F, 120, 3, 0, 0, 0, 0])))
    ext = decoder.decode(_frame(0x100, bytes([7, 0, 0, 0, 0, 0, 0, 0]), ext=True))
    assert std is not None and std.message == "ENGINE"
    assert std.signals["EngineSpeed"] == 2000.0
    assert std.signals["Coolant"] == 80
    assert std.signals["Gear"] == "D"  # value tables come back as their names
    assert ext is not None and ext.message == "ENGINE_EXT" and ext.signals == {"Other": 7}


def test_motorola_fd_and_multiplexed_messages_decode_as_cantools_does() -> None:
    db = load_databases([TEST_DBC])[0]
    decoder = Decoder(build_index(load_databases([TEST_DBC])))
    cases = [
        (0x200, bytes([0x27, 0x10, 0x01, 0x02, 0x03, 0xFF, 0x60, 0]), False),
        (0x300, bytes([0, 0x10, 0x0E, 0x20, 0x0E, 0, 0, 0]), False),
        (0x300, bytes([1, 0xF6, 30, 0, 0, 0, 0, 0]), False),
        (0x400, bytes(range(64)), True),
    ]
    for arb, data, fd in cases:
        got = decoder.decode(_frame(arb, data, fd=fd))
        assert got is not None
        assert got.signals == db.decode_message(arb, data, decode_choices=True)
    assert decoder.stats.decoded == 4


def test_unknown_short_error_and_remote_frames_are_counted_not_raised() -> None:
    decoder = Decoder(build_index(load_databases([TEST_DBC])))
    frames = [
        _frame(0x7FF, b"\x00"),
        _frame(0x7FF, b"\x01"),
        _frame(0x100, b"\x01\x02"),  # ENGINE needs 8 bytes
        can.Message(is_error_frame=True, channel="can0"),
        can.Message(arbitration_id=0x100, is_remote_frame=True, channel="can0"),
        _frame(0x300, bytes([9, 0, 0, 0, 0, 0, 0, 0])),  # multiplexer value 9 is not defined
    ]
    assert [decoder.decode(f) for f in frames] == [None] * 6
    s = decoder.stats
    assert (s.unknown[0x7FF], s.malformed, s.error_frames, s.remote_frames) == (2, 2, 1, 1)


def test_identical_payloads_are_decoded_once() -> None:
    decoder = Decoder(build_index(load_databases([TEST_DBC])))
    data = bytes([0x40, 0x1F, 120, 3, 0, 0, 0, 0])
    first = decoder.decode(_frame(0x100, data))
    second = decoder.decode(_frame(0x100, data, t=1.0))
    assert first is not None and second is not None
    assert second.t == 1.0 and second.signals == first.signals
    assert decoder.stats.repeated == 1


def test_missing_or_broken_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="does not exist"):
        load_databases([tmp_path / "nope.dbc"])
    broken = tmp_path / "broken.dbc"
    broken.write_text("BO_ this is not a dbc\n")
    with pytest.raises(DecodeError, match="cannot read database"):
        load_databases([broken])


@needs_shared
def test_real_j1939_truck_log_decodes_by_pgn() -> None:
    index = build_index(load_databases([J1939_DBC]))
    assert index.j1939  # detected from the database's ProtocolType attribute
    decoder = Decoder(index)
    readings: dict[str, list[float]] = {"EEC1": [], "CCVS1": []}
    for msg in read_log(TRUCK_LOG):
        got = decoder.decode(msg)
        if got is not None:
            value = next(iter(got.signals.values()))
            assert isinstance(value, float)
            readings[got.message].append(value)
            assert got.source == msg.arbitration_id & 0xFF
    assert len(readings["EEC1"]) > 3000 and len(readings["CCVS1"]) > 3000
    assert all(0 <= rpm <= 3000 for rpm in readings["EEC1"])
    # A plain id lookup (no PGN matching) finds none of these frames: the SA differs.
    plain = Decoder(build_index(load_databases([J1939_DBC]), j1939=False))
    assert sum(plain.decode(m) is not None for m in read_log(TRUCK_LOG)) == 0
