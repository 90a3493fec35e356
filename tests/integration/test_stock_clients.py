"""Acceptance with Mosquitto's own mosquitto_pub/mosquitto_sub and the 'canvoy broker' command."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.certs import pki
from tests.conftest import free_port
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mosquitto_pub") is None, reason="mosquitto-clients is not installed"
    ),
]


def _canvoy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args], capture_output=True, text=True, check=False
    )


def _tls(root: Path, kind: str, name: str, port: int) -> list[str]:
    folder = root / kind / name
    return [
        "-h",
        "localhost",
        "-p",
        str(port),
        "-V",
        "mqttv5",
        "-i",
        name,
        "--cafile",
        str(root / "ca.pem"),
        "--cert",
        str(folder / "cert.pem"),
        "--key",
        str(folder / "key.pem"),
    ]


def _pub(root: Path, name: str, port: int, topic: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", *_tls(root, "device", name, port), "-t", topic, "-m", "hi", "-q", "1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_stock_clients_against_canvoy_broker(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    for args in (
        ["init"],
        ["issue", "broker", "--host", "localhost", "--host", "127.0.0.1"],
        ["issue", "device", "car-1"],
        ["issue", "device", "car-2"],
        ["issue", "bridge", "b1"],
    ):
        result = _canvoy("certs", *args, "--dir", str(root))
        assert result.returncode == 0, result.stderr
    port = free_port()
    log = (tmp_path / "broker.log").open("wb")
    broker = subprocess.Popen(
        [sys.executable, "-m", "canvoy", "broker", "--certs", str(root), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "running" in (tmp_path / "broker.log").read_text(), what="broker start")
        out = tmp_path / "sub.out"
        with out.open("w") as sub_out:
            sub = subprocess.Popen(
                ["mosquitto_sub", *_tls(root, "bridge", "b1", port), "-t", "canvoy/v1/#", "-v"],
                stdout=sub_out,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: "b1" in (tmp_path / "broker.log").read_text(), what="subscriber")
                assert _pub(root, "car-1", port, "canvoy/v1/car-2/telemetry").returncode == 0
                assert _pub(root, "car-1", port, "canvoy/v1/car-1/telemetry").returncode == 0
                wait_for(lambda: "car-1/telemetry" in out.read_text(), what="bridge to receive")
            finally:
                sub.terminate()
                sub.wait(10)
        assert out.read_text().splitlines() == ["canvoy/v1/car-1/telemetry hi"]

        anonymous = subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "localhost",
                "-p",
                str(port),
                "--cafile",
                str(root / "ca.pem"),
                "-t",
                "canvoy/v1/car-1/telemetry",
                "-m",
                "x",
                "-q",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert anonymous.returncode != 0

        assert _pub(root, "car-2", port, "canvoy/v1/car-2/telemetry").returncode == 0
        assert _canvoy("certs", "revoke", "car-2", "--dir", str(root)).returncode == 0
        broker.send_signal(signal.SIGHUP)
        wait_for(
            lambda: _pub(root, "car-2", port, "canvoy/v1/car-2/telemetry").returncode != 0,
            what="revoked device to be refused",
        )
        assert _pub(root, "car-1", port, "canvoy/v1/car-1/telemetry").returncode == 0
    finally:
        broker.send_signal(signal.SIGTERM)
        code = broker.wait(20)
        log.close()
    assert code == 0


def test_broker_without_pki_says_what_to_do(tmp_path: Path) -> None:
    result = _canvoy("broker", "--certs", str(tmp_path / "nothing"), "--port", "18999")
    assert result.returncode == 2
    assert "canvoy certs init" in result.stderr
    assert "Traceback" not in result.stderr


def test_certs_issue_refuses_bad_device_id(tmp_path: Path) -> None:
    assert _canvoy("certs", "init", "--dir", str(tmp_path)).returncode == 0
    result = _canvoy("certs", "issue", "device", "car 7", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "canvoy certs: error: device name 'car 7' is invalid: use 1-64 of [A-Za-z0-9_-]"
    ]
    assert pki.identities(tmp_path) == []
