"""`canvoy decode` as a user runs it: output equals cantools, errors are one line and exit 2."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import can
import pytest

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
    assert [r["signals"] for r in rows] == _expected(log)
    assert {"t", "bus", "id", "name", "signals"} <= set(rows[0])
    assert "unknown ids 1" in result.stderr and "malformed" in result.stderr


def test_signal_filter(tmp_path: Path) -> None:
    log = _random_log(tmp_path / "drive.blf", 500)
    result = _canvoy("decode", "--dbc", TEST_DBC, "--signals", "ENGINE.Gear", "Speed", "--", log)
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
