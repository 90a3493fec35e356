"""Truncated and corrupted BLF, ASC, candump and TRC files through replay and ``canvoy decode``.

Whatever the bytes, there is no traceback: a file with no readable frame is one line and exit
2; otherwise what could be read is decoded, at most one warning says where reading stopped,
and the counts add up.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvoy import dbc as shipped
from canvoy.agent.buses import BusConfig
from canvoy.agent.collect import Sample
from canvoy.agent.ingest import Ingest
from canvoy.agent.policy import load_policy
from canvoy.agent.source import ReplayStats, read_log
from canvoy.cli import main
from canvoy.errors import DecodeError
from canvoy.simulator.emit import Drive, record
from canvoy.simulator.scenarios import load_scenario
from tests.waiting import wait_for

DEMO = shipped.path(shipped.DEMO_DBC)
SUFFIXES = (".blf", ".asc", ".log", ".trc")
_ORIGINALS: dict[str, bytes] = {}


def _original(suffix: str) -> bytes:
    """A recorded drive (about 3,000 frames) in ``suffix``'s format, made once."""
    if suffix not in _ORIGINALS:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"drive{suffix}"
            record(Drive(load_scenario("bus_noise"), databases=[DEMO]), path, 10.0)
            _ORIGINALS[suffix] = path.read_bytes()
    return _ORIGINALS[suffix]


@st.composite
def damaged(draw: st.DrawFn, suffix: str) -> bytes:
    """The file cut somewhere, with some bytes overwritten at random places."""
    data = bytearray(_original(suffix))
    cut = draw(st.integers(0, len(data)))
    del data[cut:]
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=64))
        data[at : at + len(junk)] = junk
    return bytes(data)


def _decode(path: Path) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["decode", str(path), "--dbc", str(DEMO), "-o", str(path) + ".jsonl"])
    return code, err.getvalue().splitlines()


def _check(path: Path) -> None:
    stats = ReplayStats()
    try:
        frames = sum(1 for _ in read_log(path, stats))
    except DecodeError as exc:
        frames = -1
        assert str(path) in str(exc)
    code, lines = _decode(path)
    assert not any("Traceback" in line for line in lines), lines
    if frames < 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("canvoy decode: error: ")
        assert "expected a" in lines[0] or "is not a readable" in lines[0], lines
        return
    assert code == 0 and frames == stats.frames > 0
    summary, warnings = lines[0], lines[1:]
    assert summary.startswith(f"frames read {frames}, "), summary
    assert len(warnings) == len(stats.errors) <= 1, warnings
    assert all(w.startswith(f"warning: {path.name}: ") for w in warnings), warnings
    written = sum(1 for _ in open(str(path) + ".jsonl"))  # noqa: SIM115 - counted and closed
    assert f"({written} written)" in summary
    # The agent's replay reads the same frames into its collector.
    bus = BusConfig(name="pt", databases=(DEMO,), replay=path)
    samples: list[Sample] = []
    ingest = Ingest([bus], load_policy(None), samples.append)
    ingest.start()
    wait_for(ingest.replays_done, what="the replay to end")
    channel = ingest.channels[0]
    assert channel.replay is not None and channel.replay.frames == frames
    s = channel.collector.stats
    assert s.frames == frames
    assert channel.collector.faults.count == 0
    assert (
        s.decoded + s.repeated + s.unknown_frames + s.malformed + s.error_frames + s.remote_frames
        == s.frames
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_logs_never_give_a_traceback(suffix: str, data: st.DataObject) -> None:
    content = data.draw(damaged(suffix))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"drive{suffix}"
        path.write_bytes(content)
        _check(path)


@pytest.mark.parametrize("suffix", SUFFIXES)
@settings(max_examples=15, deadline=None)
@given(content=st.binary(max_size=4096))
def test_random_bytes_with_a_log_suffix(suffix: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"random{suffix}"
        path.write_bytes(content)
        _check(path)


def test_the_acceptance_files(tmp_path: Path) -> None:
    """A BLF cut to 20 bytes, random bytes as .blf, a garbage .asc: one line, exit 2. A BLF
    cut in the middle: decoded up to the cut, with the warning, exit 0."""
    blf = _original(".blf")
    cases = {
        "cut20.blf": blf[:20],
        "random.blf": bytes(range(256)) * 40,
        "garbage.asc": b"this is not\nan ASC file\n" * 100,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, lines = _decode(path)
        assert (code, len(lines)) == (2, 1), (name, lines)
        assert name in lines[0]
    whole = tmp_path / "whole.blf"
    whole.write_bytes(blf)
    total = sum(1 for _ in can.LogReader(str(whole)))
    path = tmp_path / "half.blf"
    path.write_bytes(blf[: len(blf) // 2])
    code, lines = _decode(path)
    assert code == 0 and len(lines) == 2, lines
    frames = int(lines[0].split()[2].rstrip(","))
    assert 0 < frames < total
    assert lines[1].startswith(f"warning: half.blf: truncated after {frames:,} frames at byte ")
