"""``canvoy agent status`` before the first run, during a replay and after it ended (issue 17)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agentkit import REPO, agent_config, drive_log, start_agent, stop
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def status(config: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", "agent", "status", "--config", str(config), *more],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )


def test_status_before_the_first_run(broker: RunningBroker, tmp_path: Path) -> None:
    config = agent_config(tmp_path / "agent.yaml", broker, replay=drive_log(tmp_path / "d.log", 1))
    done = status(config)
    assert done.returncode == 0, done.stderr
    assert "has not run yet" in done.stdout and "canvoy agent run --config" in done.stdout
    report = json.loads(status(config, "--json").stdout)
    assert report["state"] == "not run yet"


def test_status_shows_replay_progress_then_its_end(broker: RunningBroker, tmp_path: Path) -> None:
    log = drive_log(tmp_path / "drive.log", 4.0)
    total = sum(1 for line in log.read_text().splitlines() if line.strip())
    config = agent_config(tmp_path / "agent.yaml", broker, replay=log, speed="realtime")
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        progress = re.compile(rf"replay pt\s+([\d,]+) of {total:,} frames \(([\d.]+)%\)")
        seen: list[float] = []

        def in_progress() -> bool:
            found = progress.search(status(config).stdout)
            if found is not None:
                seen.append(float(found.group(2)))
            return found is not None and 0 < float(found.group(2)) < 100

        wait_for(in_progress, 30, f"progress of {total} frames shown")
        wait_for(lambda: "replay ended" in status(config).stdout, 30, "the replay's end shown")
        text = status(config).stdout
        assert f"ended: {total:,} frames read" in text
        assert text.splitlines()[1].startswith("agent             running")
        report = json.loads(status(config, "--json").stdout)
        assert report["agent"]["replays"]["pt"]["total"] == total
    finally:
        assert stop(agent) == 0
