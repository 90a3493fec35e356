"""``canvoy agent status`` when the agent's live status file is damaged: the outbox still shows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.config import load_config
from canvoy.agent.outbox import Outbox
from canvoy.agent.service import status_path
from canvoy.cli import main
from tests.agentkit import TEST_DBC


@pytest.fixture
def config(pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "agent.yaml"
    init = ["agent", "init", "--device", "car-1", "--certs", str(pki_dir)]
    init += ["--broker", "127.0.0.1", "--dbc", str(TEST_DBC), "--bus", "virtual:x"]
    assert main([*init, "--outbox", str(tmp_path / "box.sqlite"), "-o", str(path)]) == 0
    loaded = load_config(path)
    key = ec.generate_private_key(ec.SECP256R1())
    Outbox(loaded.outbox, device="car-1", boot=os.urandom(16), key=key).close()
    capsys.readouterr()
    return path


@pytest.mark.parametrize(
    "live",
    [
        "[1, 2]",
        '{"replays": 5}',
        '{"state": "running", "updated_ms": "x"}',
        '{"publisher": "x"}',
        '{"state": "stopped", "replays": {"can0": {"frames": "x"}}}',
        '{"state": "stopped", "replays": {"can0": {"frames": 1, "percent": "x"}}}',
        '{"sealer": {}, "buses": [1]}',
    ],
)
@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_a_damaged_live_file_costs_only_its_own_lines(
    config: Path, capsys: pytest.CaptureFixture[str], live: str, json_out: bool
) -> None:
    """`[1, 2]` in the live file was 'unexpected error: AttributeError'."""
    status_path(load_config(config).outbox.path).write_text(live)
    code = main(["agent", "status", "--config", str(config), *(["--json"] if json_out else [])])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "unexpected error" not in err and err.count("\n") <= 1
    assert ("car-1" in out) and ('"depth": 0' in out if json_out else "waiting         0" in out)
