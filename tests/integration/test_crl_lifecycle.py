"""A CRL past its next update locks every client out; the tools say so, and a re-signed CRL
plus SIGHUP lets everyone back in without restarting the broker."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.certs import pki
from canvoy.certs.health import log_crl_freshness
from canvoy.errors import ConnectRefusedError
from canvoy.transport.mqtt import Connection
from tests.conftest import free_port
from tests.identitykit import dated_crl
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


def _canvoy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canvoy", *args], capture_output=True, text=True, check=False
    )


def _connects(root: Path, port: int, kind: pki.IdentityKind, name: str) -> bool:
    conn = Connection(client_id=name, tls=pki.tls_files(root, kind, name).context())
    try:
        conn.connect("127.0.0.1", port, timeout_s=5)
    except ConnectRefusedError:
        return False
    conn.close()
    return True


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
def test_lapsed_crl_is_reported_and_healed_by_resigning(pki_dir: Path, tmp_path: Path) -> None:
    root = pki_dir
    dated_crl(
        root, last_update=NOW - dt.timedelta(days=400), next_update=NOW - dt.timedelta(hours=2)
    )
    listing = _canvoy("certs", "list", "--certs", str(root))
    assert listing.returncode == 0 and "LAPSED" in listing.stdout, listing.stdout
    check = _canvoy("certs", "check", "--within", "30", "--certs", str(root))
    assert check.returncode == 1
    assert "CRL: lapsed" in check.stdout and "canvoy certs crl" in check.stdout, check.stdout

    port = free_port()
    log_path = tmp_path / "broker.log"
    with log_path.open("wb") as log:
        broker = subprocess.Popen(
            [sys.executable, "-m", "canvoy", "broker", "--certs", str(root), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "running" in log_path.read_text(), what="broker start")
        assert "ERROR" in log_path.read_text() and "CRL: lapsed" in log_path.read_text()
        folder = root / "device" / "car-1"
        stock = subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                "localhost",
                "-p",
                str(port),
                "-V",
                "mqttv5",
                "--cafile",
                str(root / "ca.pem"),
                "--cert",
                str(folder / "cert.pem"),
                "--key",
                str(folder / "key.pem"),
                "-t",
                "canvoy/v1/car-1/status",
                "-m",
                "x",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert stock.returncode != 0, "a lapsed CRL should lock the stock client out"
        with pytest.raises(ConnectRefusedError, match="CRL"):
            conn = Connection(
                client_id="car-1", tls=pki.tls_files(root, "device", "car-1").context()
            )
            conn.connect("127.0.0.1", port, timeout_s=5)

        resigned = _canvoy("certs", "crl", "--certs", str(root), "--days", "30")
        assert resigned.returncode == 0, resigned.stderr
        broker.send_signal(signal.SIGHUP)
        everyone: list[tuple[pki.IdentityKind, str]] = [
            ("device", "car-1"),
            ("device", "car-2"),
            ("bridge", "b1"),
            ("operator", "ops"),
        ]
        wait_for(
            lambda: all(_connects(root, port, k, n) for k, n in everyone),
            what="every identity back",
        )
        check = _canvoy("certs", "check", "--within", "7", "--certs", str(root))
        assert check.returncode == 0, check.stdout
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(20)


def test_crl_near_its_next_update_warns_and_past_it_errors(
    pki_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.crl")
    path = pki.crl_path(pki_dir)
    cases = [
        (dt.timedelta(days=30), []),
        (dt.timedelta(days=3), [logging.WARNING]),
        (dt.timedelta(hours=-1), [logging.ERROR]),
    ]
    for until_next, levels in cases:
        dated_crl(pki_dir, last_update=NOW - dt.timedelta(days=1), next_update=NOW + until_next)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="test.crl"):
            log_crl_freshness(path, logger, certs=str(pki_dir))
        assert [r.levelno for r in caplog.records] == levels, until_next
        assert all("canvoy certs crl" in r.getMessage() for r in caplog.records)
    path.write_text("not a CRL")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.crl"):
        log_crl_freshness(path, logger)
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
