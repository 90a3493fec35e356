"""The command line loads python-can's MF4 support (asammdf) only for an .mf4 file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA

TP_MF4 = SHARED_DATA / "j1939_tp_00000001.MF4"
TP_LOG = SHARED_DATA / "j1939_tp_00000001.log"
needs_asammdf = pytest.mark.skipif(
    importlib.util.find_spec("asammdf") is None, reason="asammdf (canvoy[mf4]) is not installed"
)


def _python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.integration
@needs_asammdf
def test_the_command_line_starts_without_asammdf_numpy_or_pandas() -> None:
    done = _python(
        "import sys\n"
        "import canvoy.cli\n"
        "import can\n"
        "print(sorted(m for m in ('asammdf', 'numpy', 'pandas') if m in sys.modules))\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.integration
@needs_asammdf
@pytest.mark.skipif(not TP_MF4.is_file(), reason=f"{TP_MF4} is absent")
def test_an_mf4_log_is_read_once_its_support_is_loaded() -> None:
    done = _python(
        "import sys\n"
        "from canvoy import mf4\n"
        "mf4.defer()\n"
        "import can\n"
        "assert 'asammdf' not in sys.modules\n"
        "from canvoy.agent.source import read_log\n"
        f"frames = list(read_log({str(TP_MF4)!r}))\n"
        "import asammdf\n"  # anyone's own import of asammdf still works
        "print(len(frames), frames[0].arbitration_id)\n"
    )
    assert done.returncode == 0, done.stderr
    count, first = done.stdout.split()
    reference = _python(
        "from canvoy.agent.source import read_log\n"
        f"print(next(iter(read_log({str(TP_LOG)!r}))).arbitration_id)"
    )
    assert count == "1815"  # the README's count for this recording
    assert first == reference.stdout.strip()


@pytest.mark.integration
@needs_asammdf
def test_sim_record_writes_an_mf4_that_decode_reads(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "canvoy"]
    recorded = subprocess.run(
        [*cli, "sim", "record", "-o", "drive.mf4", "--duration", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert recorded.returncode == 0, recorded.stderr
    subprocess.run([*cli, "dbc", "copy", "demo_vehicle.dbc"], cwd=tmp_path, check=True)
    decoded = subprocess.run(
        [*cli, "decode", "drive.mf4", "--dbc", "demo_vehicle.dbc", "-o", "out.jsonl"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert decoded.returncode == 0, decoded.stderr
    written = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(written) > 100
    assert "Traceback" not in recorded.stderr + decoded.stderr


def _canvoy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


@pytest.mark.integration
@needs_asammdf
def test_cut_and_foreign_mf4_files_give_one_line_and_no_traceback(tmp_path: Path) -> None:
    recorded = _canvoy(tmp_path, "sim", "record", "-o", "drive.mf4", "--duration", "20")
    assert recorded.returncode == 0, recorded.stderr
    assert _canvoy(tmp_path, "dbc", "copy", "demo_vehicle.dbc").returncode == 0
    whole = (tmp_path / "drive.mf4").read_bytes()
    (tmp_path / "cut.mf4").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "random.mf4").write_bytes(bytes(range(256)) * 40)
    for name in ("cut.mf4", "random.mf4"):
        done = _canvoy(tmp_path, "decode", name, "--dbc", "demo_vehicle.dbc", "-o", "out.jsonl")
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert name in done.stderr and "Traceback" not in done.stderr
