"""``canvoy broker`` SIGKILLed: its Mosquitto goes with it, so a restarted broker can listen."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.waiting import wait_for


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.integration
def test_a_killed_broker_command_leaves_no_mosquitto_behind(pki_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "canvoy", "broker", "--certs", str(pki_dir)]
    command += ["--port", str(port), "--data", str(tmp_path / "data")]
    log = (tmp_path / "broker.log").open("wb")
    first = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        wait_for(lambda: _listening(port), timeout_s=20, what="canvoy broker listening")
        mosquitto = _children(first.pid)
        assert mosquitto, "canvoy broker runs Mosquitto as its child"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_for(
            lambda: not any(_alive(pid) for pid in mosquitto),
            timeout_s=10,
            what="Mosquitto ending with the command that started it",
        )
        wait_for(lambda: not _listening(port), timeout_s=10, what="the port free again")
        second = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            wait_for(lambda: _listening(port), timeout_s=20, what="a restarted broker listening")
            assert second.poll() is None
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
