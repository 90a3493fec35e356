"""candump text on a stream (``canvoy decode -``): both candump formats, and hostile text."""

from __future__ import annotations

import io

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.agent.candump import read_stream
from canvoy.agent.source import ReplayStats
from canvoy.errors import DecodeError

frames = st.builds(
    lambda ext, arb, data, t: (ext, arb & (0x1FFFFFFF if ext else 0x7FF), bytes(data), t),
    st.booleans(),
    st.integers(0, 0x1FFFFFFF),
    st.binary(min_size=0, max_size=8),
    st.floats(0, 2e9, allow_nan=False).map(lambda t: round(t, 6)),
)


def _log_text(items: list[tuple[bool, int, bytes, float]]) -> str:
    """What ``candump -L`` prints, written by python-can's own writer."""
    out = io.StringIO()
    writer = can.io.CanutilsLogWriter(out)
    for ext, arb, data, t in items:
        writer.on_message_received(
            can.Message(
                timestamp=t, arbitration_id=arb, is_extended_id=ext, data=data, channel="can0"
            )
        )
    return out.getvalue()


def _screen_text(items: list[tuple[bool, int, bytes, float]]) -> str:
    """What plain ``candump can0`` prints."""
    lines = []
    for ext, arb, data, _t in items:
        ident = f"{arb:08X}" if ext else f"{arb:03X}"
        lines.append(f"  can0  {ident}   [{len(data)}]  {data.hex(' ').upper()}\n")
    return "".join(lines)


def _in_time_order(
    items: list[tuple[bool, int, bytes, float]],
) -> list[tuple[bool, int, bytes, float]]:
    """candump prints frames as they come: times never go back (python-can's writer clamps)."""
    times = sorted(t for *_x, t in items)
    return [(ext, arb, data, t) for (ext, arb, data, _t), t in zip(items, times, strict=True)]


def _read(text: str) -> tuple[list[can.Message], ReplayStats]:
    stats = ReplayStats()
    return list(read_stream(io.StringIO(text), stats)), stats


@given(st.lists(frames, min_size=1, max_size=30))
def test_candump_log_lines_read_back(items: list[tuple[bool, int, bytes, float]]) -> None:
    items = _in_time_order(items)
    got, stats = _read(_log_text(items))
    assert [(m.is_extended_id, m.arbitration_id, bytes(m.data)) for m in got] == [
        (ext, arb, data) for ext, arb, data, _t in items
    ]
    assert [m.timestamp for m in got] == pytest.approx([t for *_x, t in items], abs=1e-6)
    assert stats.frames == len(items) and stats.bad_lines == 0


@given(st.lists(frames.filter(lambda f: f[2] != b""), min_size=1, max_size=30))
def test_candump_screen_lines_read_back(items: list[tuple[bool, int, bytes, float]]) -> None:
    got, stats = _read(_screen_text(items))
    assert [(m.is_extended_id, m.arbitration_id, bytes(m.data), m.channel) for m in got] == [
        (ext, arb, data, "can0") for ext, arb, data, _t in items
    ]
    assert stats.bad_lines == 0


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_any_text_gives_frames_or_one_decode_error(text: str) -> None:
    try:
        got, stats = _read(text)
    except DecodeError as exc:
        assert "standard input has no readable frame" in str(exc)
        return
    assert got and stats.frames == len(got)


@given(
    st.lists(frames, min_size=1, max_size=10),
    st.lists(st.text(alphabet="abcxyz ()#:[]0123456789", max_size=30), max_size=10),
)
def test_junk_between_log_lines_is_skipped_not_fatal(
    items: list[tuple[bool, int, bytes, float]], junk: list[str]
) -> None:
    items = _in_time_order(items)
    lines = _log_text(items).splitlines(keepends=True)
    mixed = [lines[0], *(f"{j}\n" for j in junk), *lines[1:]]
    got, stats = _read("".join(mixed))
    # A junk line may happen to be a valid candump -L line; every real frame still arrives.
    real = [(arb, data) for _e, arb, data, _t in items]
    seen = [(m.arbitration_id, bytes(m.data)) for m in got]
    assert seen[0] == real[0] and seen[len(seen) - len(real) + 1 :] == real[1:]
    assert stats.frames + stats.bad_lines >= len(items)


def test_empty_stream_says_what_was_expected() -> None:
    with pytest.raises(DecodeError, match=r"\(it was empty\): expected candump -L lines such as"):
        _read("\n\n")  # it said "(0 line(s) not understood)"
