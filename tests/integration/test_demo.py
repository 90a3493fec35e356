"""``canvoy demo`` end to end: the overheat DTC reaches the service desk; nothing is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.agentkit import REPO


def test_demo_delivers_the_dtc_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Exactly one ticket for the P0217 episode, opened and then closed.
    tickets = {line.split()[2] for line in out.splitlines() if "service ticket" in line}
    p0217 = [t for t in tickets if t.startswith("demo-car-1:P0217:")]
    assert len(p0217) == 1, tickets
    assert any(t.startswith("demo-car-1:coolant_overtemp:") for t in tickets)  # the trigger
    assert " open: P0217" in out and " closed: P0217" in out
    # The agent knows both events reached the service desk's side.
    assert "P0217 set" in out and "coolant_overtemp set" in out
    assert out.count("delivered at") == 4 and "pending since" not in out
    assert "canvoy tail --certs" in out
    left = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", f"processes left running: {left.stdout}"
    records = (workdir / "records.jsonl").read_text().splitlines()
    assert len(records) > 10
