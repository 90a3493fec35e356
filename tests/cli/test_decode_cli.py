"""`canvoy decode` as a user runs it: output equals cantools, errors are one line and exit 2."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import can
import pytest

from canvoy.agent.candump import EXPECTED
from canvoy.agent.database import load_databases
from tests.agent.test_decode import J1939_DBC, TEST_DBC, TRUCK_LOG, needs_shared


def _canvoy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _random_log(path: Path, frames: int = 3000) -> Path:
    db = load_databases([TEST_DBC])[0]
    rng = random.Random(7)
    ids = [(m.frame_id, m.is_extended_frame, m.length, m.is_fd) for m in db.messages]
    with can.Logger(str(path)) as logger:
        for i in range(frames):
            arb, ext, length, fd = rng.choice([*ids, (0x7AB, False, 8, False)])
            page = rng.choice([0, 1, 7]) if arb == 0x300 else rng.randrange(256)
            data = bytes([page]) + bytes(rng.randrange(256) for _ in range(length - 1))
            logger.on_message_received(
                can.Message(
                    timestamp=1_700_000_000 + i * 0.001,
                    arbitration_id=arb,
                    is_extended_id=ext,
                    is_fd=fd,
                    data=data,
                    channel=0,
                )
            )
    return path


def _expected(log: Path) -> list[dict[str, object]]:
    db = load_databases([TEST_DBC])[0]
    rows = []
    for msg in can.LogReader(str(log)):
        try:
            message = db.get_message_by_frame_id(msg.arbitration_id, msg.is_extended_id)
            decoded = message.decode(bytes(msg.data), decode_choices=True)
        except Exception:
            continue  # unknown id or an undecodable payload: left out
        assert isinstance(decoded, dict)
        rows.append({k: v if isinstance(v, int | float) else str(v) for k, v in decoded.items()})
    result: list[dict[str, object]] = json.loads(json.dumps(rows))
    return result


@pytest.mark.parametrize("suffix", [".blf", ".log"])
def test_decode_prints_what_cantools_decodes(tmp_path: Path, suffix: str) -> None:
    log = _random_log(tmp_path / f"drive{suffix}")
    out = tmp_path / "out.jsonl"
    result = _canvoy("decode", "--dbc", TEST_DBC, log, "-o", out)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # Values are at their signal's resolution: equal to cantools' up to float noise.
    assert [r["signals"] for r in rows] == [
        {
            k: pytest.approx(v, rel=1e-12, abs=1e-9) if isinstance(v, float) else v
            for k, v in e.items()
        }
        for e in _expected(log)
    ]
    assert {"t", "bus", "id", "name", "signals"} <= set(rows[0])
    # Hexadecimal as candump prints it: 3 digits for 11-bit ids, 8 for 29-bit ids.
    assert {"100", "00000100", "200", "300"} <= {r["id"] for r in rows}
    assert "unknown ids 1" in result.stderr and "malformed" in result.stderr


@pytest.mark.parametrize(
    "flags",
    [
        ["--signals", "ENGINE.Gear,Speed"],
        ["--signals", "ENGINE.Gear", "--signal", "Speed"],
        ["--signals", "ENGINE.Gear, Speed,"],
    ],
)
def test_signal_filter_leaves_the_log_argument_alone(tmp_path: Path, flags: list[str]) -> None:
    log = _random_log(tmp_path / "drive.blf", 500)
    result = _canvoy("decode", "--dbc", TEST_DBC, *flags, log)  # no '--' needed
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows and {tuple(r["signals"]) for r in rows} == {("Gear",), ("Speed",)}


@needs_shared
def test_acceptance_j1939_truck_log_prints_eec1_and_ccvs1() -> None:
    result = _canvoy("decode", "--dbc", J1939_DBC, "--j1939", TRUCK_LOG)
    assert result.returncode == 0, result.stderr
    names = {json.loads(line)["name"] for line in result.stdout.splitlines()}
    assert names == {"EEC1", "CCVS1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--dbc", "missing.dbc", "x.log"],
            "database 'missing.dbc' does not exist "
            "(canvoy's own: 'canvoy dbc list', then 'canvoy dbc copy NAME')",
        ),
        (["--dbc", str(TEST_DBC), "missing.log"], "log 'missing.log' does not exist"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _canvoy("decode", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"canvoy decode: error: {message}"]


def test_unknown_log_format_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "drive.pcap"
    log.write_bytes(b"\x00")
    result = _canvoy("decode", "--dbc", TEST_DBC, log)
    assert result.returncode == 2
    assert "unknown format '.pcap'" in result.stderr
    assert "Traceback" not in result.stderr


def _pipe(text: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", "decode", *map(str, args)],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ENGINE (0x100): EngineSpeed 0x0FA0 * 0.25 = 1000 rpm, Coolant 0x82 - 40 = 90 degC, Gear 3.
# BODY_MOTOROLA (0x200): Odometer 0x06 0x70 0x4C = 421964 * 0.1 = 42196.4 km (float noise in
# raw * scale). ENGINE_EXT (29-bit 0x100). 0x7AB is unknown.
CANDUMP_SCREEN = """\
  can0  100   [8]  A0 0F 82 03 00 00 00 00
  can0  200   [8]  00 00 06 70 4C 00 00 00
  can0  00000100   [8]  2A 00 00 00 00 00 00 00
  can0  7AB   [2]  11 22
"""
CANDUMP_LOG = """\
(1700000000.000000) can0 100#A00F820300000000
(1700000000.010000) can0 200#000006704C000000
(1700000000.020000) can0 00000100#2A00000000000000
(1700000000.030000) can0 7AB#1122
"""


@pytest.mark.parametrize("text", [CANDUMP_SCREEN, CANDUMP_LOG], ids=["candump", "candump-L"])
def test_acceptance_candump_text_on_stdin_decodes_and_csv_reads_back(text: str) -> None:
    """Acceptance 5, as written: candump text piped into `canvoy decode --dbc FILE -`."""
    decoded = _pipe(text, "--dbc", TEST_DBC, "-")
    assert decoded.returncode == 0, decoded.stderr
    rows = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert [(r["id"], r["name"]) for r in rows] == [
        ("100", "ENGINE"),
        ("200", "BODY_MOTOROLA"),
        ("00000100", "ENGINE_EXT"),
    ]
    assert rows[0]["signals"]["EngineSpeed"] == 1000 and rows[0]["signals"]["Coolant"] == 90
    assert rows[1]["signals"]["Odometer"] == 42196.4  # its resolution, not 42196.40000000001
    assert "unknown ids 1" in decoded.stderr

    as_csv = _pipe(text, "--dbc", TEST_DBC, "-", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert table[0] == ["t", "bus", "id", "sa", "message", "signal", "value"]
    records = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    odometer = next(r for r in records if r["signal"] == "Odometer")
    assert (odometer["id"], odometer["message"], odometer["value"]) == (
        "200",
        "BODY_MOTOROLA",
        "42196.4",
    )
    assert {r["id"] for r in records} == {"100", "200", "00000100"}


def test_table_is_aligned_text_with_hex_ids() -> None:
    done = _pipe(CANDUMP_LOG, "--dbc", TEST_DBC, "-", "--format", "table", "--signals", "Odo*")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].split() == [
        "1700000000.010000",
        "can0",
        "200",
        "BODY_MOTOROLA",
        "Odometer",
        "42196.4",
    ]


def test_stdin_garbage_is_one_line_exit_2() -> None:
    done = _pipe("\x00\xff garbage\nnot a frame\n", "--dbc", TEST_DBC, "-")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "canvoy decode: error: standard input has no readable frame (2 line(s) not understood): "
        + EXPECTED
    ]


def test_bad_lines_among_good_ones_are_counted_and_skipped() -> None:
    text = CANDUMP_LOG.replace("(1700000000.010000)", "(oops)")
    text += "junk\n(1.5) can0 100#A00F820300000000\n"
    done = _pipe(text, "--dbc", TEST_DBC, "-")
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["name"] for line in done.stdout.splitlines()] == [
        "ENGINE",
        "ENGINE_EXT",
        "ENGINE",
    ]
    assert "bad log lines 2" in done.stderr


def test_closed_stdin_is_one_line_exit_2() -> None:
    done = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m canvoy decode --dbc "{TEST_DBC}" - <&-'],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("canvoy decode: error: standard input is closed: pipe candump")
    assert done.stderr.count("\n") == 1


def test_binary_noise_between_frames_is_counted_not_fatal() -> None:
    noise = bytes(range(256)).decode("latin-1") * 20
    done = _pipe(CANDUMP_LOG + noise + "\n" + CANDUMP_LOG, "--dbc", TEST_DBC, "-")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 6
    assert "bad log lines" in done.stderr and "bad log lines 0" not in done.stderr


def test_output_cut_short_by_the_reader_is_not_an_error() -> None:
    """`... | canvoy decode - | head -1`: the pipe closes early; no traceback, exit 0."""
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'set -o pipefail; "{sys.executable}" -m canvoy decode --dbc "{TEST_DBC}" - | head -1',
        ],
        input=CANDUMP_LOG * 2000,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
