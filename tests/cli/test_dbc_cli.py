"""``canvoy dbc`` and the demo's work folder: one clear line for every mistake, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _canvoy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def test_dbc_copy_writes_databases_and_scenarios_and_refuses_clearly(tmp_path: Path) -> None:
    done = _canvoy("dbc", "copy", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "demo_vehicle.dbc").is_file()
    assert _canvoy("dbc", "copy", "overheat", "-o", "out", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out" / "overheat.yaml").is_file()
    again = _canvoy("dbc", "copy", "-o", "out", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    (tmp_path / "afile").write_text("x")
    for args in (["-o", "afile"], ["nosuch.dbc"]):
        bad = _canvoy("dbc", "copy", *args, cwd=tmp_path)
        assert bad.returncode == 2, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "unexpected" not in bad.stderr


def test_the_demo_never_removes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    (tmp_path / "afile").write_text("keep")
    for workdir in ("mine", "afile"):
        done = _canvoy("demo", "--workdir", workdir, cwd=tmp_path)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"
    assert (tmp_path / "afile").read_text() == "keep"
