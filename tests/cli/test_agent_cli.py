"""``canvoy agent init/run/status`` as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.commands.agent import _age
from tests.agentkit import REPO, TEST_DBC, Recorder, drive_log
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def canvoy(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_init_writes_a_config_that_runs_as_is(broker: RunningBroker, tmp_path: Path) -> None:
    log = drive_log(tmp_path / "drive.asc", 20)
    config = tmp_path / "conf" / "agent.yaml"
    done = canvoy(
        "agent",
        "init",
        "--device",
        "car-2",
        "--certs",
        str(broker.certs),
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--dbc",
        str(TEST_DBC),
        "--replay",
        str(log),
        "--outbox",
        str(tmp_path / "box.sqlite"),
        "-o",
        str(config),
    )
    assert done.returncode == 0, done.stderr
    text = config.read_text()
    assert "# " in text and "device: car-2" in text  # commented, complete
    recorder = Recorder(broker, device="car-2")
    try:
        run = canvoy("agent", "run", "--config", str(config), "--exit-when-done")
        assert run.returncode == 0, run.stderr
        status = canvoy("agent", "status", "--config", str(config))
        assert status.returncode == 0, status.stderr
        # No bridge runs here: all was sent, and all waits for a bridge's confirmation.
        assert "unsent          0 envelope(s)" in status.stdout
        assert "confirmed       0 by a bridge (delivery: bridge)" in status.stdout
        assert "not running" in status.stdout
        wait_for(lambda: len(recorder.seqs) >= 1, what="the replay's batches")
        recorder.check_contiguous()
    finally:
        recorder.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("  keepalive_s: 30", "  keepalive_s: 30\n  qos_level: 2"),
            r"mqtt\.qos_level: unknown key",
        ),
        (("max_inflight: 20", "max_inflight: 50"), r"max_inflight 50 must be 1\.\.20"),
        (("sync: full", "sync: sometimes"), r"outbox\.sync: 'sometimes' is not one of"),
        (("device: car-2", "device: car-1"), r"does not match the certificate's CN 'car-2'"),
        (("max_bytes: 98304", "max_bytes: 200000"), r"max_bytes 200000 must be"),
    ],
)
def test_a_bad_config_names_the_key(
    pki_dir: Path, tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    config = tmp_path / "agent.yaml"
    done = canvoy(
        "agent",
        "init",
        "--device",
        "car-2",
        "--certs",
        str(pki_dir),
        "--broker",
        "localhost:8883",
        "--dbc",
        str(TEST_DBC),
        "--bus",
        "virtual:x",
        "-o",
        str(config),
    )
    assert done.returncode == 0, done.stderr
    old, new = edit
    assert old in config.read_text()
    config.write_text(config.read_text().replace(old, new, 1))
    run = canvoy("agent", "run", "--config", str(config))
    assert run.returncode == 2
    assert run.stderr.startswith("canvoy agent: error: ")
    assert run.stderr.count("\n") == 1  # one line, no traceback
    assert re.search(message, run.stderr), run.stderr


def test_init_refuses_a_device_without_a_certificate(pki_dir: Path, tmp_path: Path) -> None:
    done = canvoy(
        "agent",
        "init",
        "--device",
        "car-9",
        "--certs",
        str(pki_dir),
        "--broker",
        "h:1",
        "--dbc",
        str(TEST_DBC),
        "--bus",
        "virtual:x",
        "-o",
        str(tmp_path / "a.yaml"),
    )
    assert done.returncode == 2
    assert "canvoy certs issue" in done.stderr


def test_an_age_stamped_before_the_clock_was_set_back_is_not_negative() -> None:
    assert _age(None, 1_000) == "-"
    assert _age(500, 2_000) == "1.5 s ago"
    assert _age(62_000, 2_000) == "60.0 s ahead of this clock (it was set back since)"
