"""What the CLI refuses at start, in one line and exit 2: bad policies, unreadable replays,
unwritable recordings and transmitting onto a real bus without being asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.certs import pki
from tests.agentkit import TEST_DBC, drive_log
from tests.cli.test_agent_cli import canvoy


def _config(tmp_path: Path, pki_dir: Path, replay: Path, policy: Path | None) -> Path:
    folder = pki.identity_dir(pki_dir, "device", "car-1")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""device: car-1
tls: {{ca: "{pki.ca_cert_path(pki_dir)}", cert: "{folder / "cert.pem"}",
       key: "{folder / "key.pem"}"}}
buses: [{{name: pt, databases: ["{TEST_DBC}"], replay: "{replay}"}}]
policy: {f'"{policy}"' if policy else "null"}
outbox: {{path: "{tmp_path / "box.sqlite"}"}}
mqtt: {{host: 127.0.0.1, port: 1}}
"""
    )
    return config


def _one_line(done: object, *parts: str) -> str:
    assert getattr(done, "returncode", None) == 2, done
    lines = str(getattr(done, "stderr", "")).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_agent_run_refuses_a_negative_heartbeat_with_the_keys_path(
    tmp_path: Path, pki_dir: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - {match: a}\n  - {match: b}\n  - {match: c}\n"
        "  - {match: '*/ENGINE/*', heartbeat_s: -1}\n"
    )
    replay = drive_log(tmp_path / "drive.blf", 2)
    done = canvoy("agent", "run", "--config", str(_config(tmp_path, pki_dir, replay, policy)))
    _one_line(done, "policy.rules[3].heartbeat_s: must be >= 0", "policy.yaml")


def test_agent_run_refuses_a_replay_without_a_readable_frame(tmp_path: Path, pki_dir: Path) -> None:
    replay = tmp_path / "drive.blf"
    replay.write_bytes(drive_log(tmp_path / "whole.blf", 2).read_bytes()[:20])
    done = canvoy("agent", "run", "--config", str(_config(tmp_path, pki_dir, replay, None)))
    _one_line(done, "drive.blf", "Vector BLF")


def test_sim_record_into_a_missing_directory(tmp_path: Path) -> None:
    done = canvoy("sim", "record", "-o", "/nonexistent/x.blf", "--duration", "1")
    _one_line(done, "/nonexistent", "missing")


def test_sim_record_mf4_without_asammdf_names_the_extra(tmp_path: Path) -> None:
    target = tmp_path / "x.mf4"
    code = (
        "import sys; sys.modules['asammdf'] = None\n"
        "from canvoy.cli import main\n"
        f"sys.exit(main(['sim', 'record', '-o', {str(target)!r}, '--duration', '1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    _one_line(done, "asammdf", "canvoy[mf4]")
    assert not target.exists()


@pytest.mark.parametrize("interface", ["socketcan", "pcan"])
def test_sim_run_refuses_a_real_interface_without_transmit(interface: str) -> None:
    done = canvoy("sim", "run", "--interface", interface, "--channel", "can0", "--duration", "1")
    _one_line(done, "refusing to transmit", f"{interface}/can0", "--transmit")


def test_agent_init_checks_the_policy_too(tmp_path: Path, pki_dir: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: [{match: '*', min_interval_s: -2}]\n")
    done = canvoy(
        "agent",
        "init",
        "--device",
        "car-1",
        "--certs",
        str(pki_dir),
        "--broker",
        "127.0.0.1:8883",
        "--dbc",
        str(TEST_DBC),
        "--replay",
        str(drive_log(tmp_path / "drive.blf", 2)),
        "--policy",
        str(policy),
        "-o",
        str(tmp_path / "agent.yaml"),
    )
    _one_line(done, "policy.rules[0].min_interval_s: must be >= 0")
