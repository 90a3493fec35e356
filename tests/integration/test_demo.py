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
    # One ticket per episode: every ticket that opens also closes, and P0217 has one ticket.
    changes = [line.split()[2:4] for line in out.splitlines() if "service ticket" in line]
    statuses: dict[str, list[str]] = {}
    codes: dict[str, set[str]] = {}
    for line in out.splitlines():
        if "service ticket" in line:
            words = line.split()
            ticket, status, code = words[2], words[3].rstrip(":"), words[4]
            statuses.setdefault(ticket, []).append(status)
            codes.setdefault(code, set()).add(ticket)
    assert changes and all(s[0] == "open" and s[-1] == "closed" for s in statuses.values())
    assert all(s.count("open") == s.count("closed") == 1 for s in statuses.values()), statuses
    assert len(codes["P0217"]) == 1 and len(codes["coolant_overtemp"]) == 1, codes
    assert "0 rejected" in out and "verified with standardwebhooks" in out
    # The agent knows its events reached the service desk's side.
    assert "P0217 set" in out and "coolant_overtemp set" in out
    assert "P0217 clear" in out and "pending since" not in out
    assert "canvoy tail --certs" in out
    left = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", f"processes left running: {left.stdout}"
    records = (workdir / "records.jsonl").read_text().splitlines()
    assert len(records) > 10
