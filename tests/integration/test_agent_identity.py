"""Enrolment by request and healing from an expired certificate, with a real agent process."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from canvoy.agent.outbox import open_status
from canvoy.certs import pki
from canvoy.errors import StoreError, TransportError
from canvoy.transport.mqtt import Connection
from canvoy.wire.tls import TlsFiles
from tests.agentkit import REPO, TEST_DBC, Recorder, drive_log, start_agent, stop
from tests.conftest import RunningBroker
from tests.identitykit import expired_copy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _canvoy(*args: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _authorized(broker: RunningBroker, device: str, tls_files: TlsFiles) -> bool:
    """True once the broker's reloaded ACL lets ``device`` publish under its own topic."""
    conn = Connection(client_id=device, tls=tls_files.context())
    try:
        conn.connect(broker.host, broker.port, timeout_s=5)
        conn.publish(f"canvoy/v1/{device}/status", b"probe").result(5)
        return True
    except TransportError:
        return False
    finally:
        if conn.connected:
            conn.close()


def _depth(outbox: Path) -> int:
    """Envelopes waiting; 0 while the starting agent has not created its outbox yet."""
    try:
        return open_status(outbox).depth
    except StoreError:
        return 0


def test_request_sign_then_agent_delivers_and_the_ca_never_holds_the_key(
    broker: RunningBroker, tmp_path: Path
) -> None:
    car = tmp_path / "vehicle"
    key = car / "key.pem"
    _canvoy("certs", "request", "device", "car-3", "--key", key, "-o", car / "car-3.csr")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _canvoy("certs", "sign", car / "car-3.csr", "--certs", broker.certs, "-o", car / "cert.pem")
    shutil.copy(pki.ca_cert_path(broker.certs), car / "ca.pem")
    secret = key.read_bytes()
    for path in broker.certs.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert not (broker.certs / "device" / "car-3" / "key.pem").exists()
    broker.broker.reload()
    files = TlsFiles(ca=car / "ca.pem", cert=car / "cert.pem", key=key)
    wait_for(lambda: _authorized(broker, "car-3", files), what="ACL with car-3")

    config = tmp_path / "agent.yaml"
    log = drive_log(tmp_path / "drive.blf", 20)
    _canvoy(
        "agent",
        "init",
        "--device",
        "car-3",
        "--certs",
        car,
        "--key",
        key,
        "--cert",
        car / "cert.pem",
        "--broker",
        f"127.0.0.1:{broker.port}",
        "--dbc",
        TEST_DBC,
        "--replay",
        log,
        "--outbox",
        tmp_path / "car-3.sqlite",
        "-o",
        config,
    )
    recorder = Recorder(broker, device="car-3")
    try:
        agent = start_agent(config, tmp_path / "agent.log", "--exit-when-done")
        assert agent.wait(120) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        last = open_status(tmp_path / "car-3.sqlite").counters["next_seq"] - 1
        wait_for(lambda: recorder.seqs[-1:] == [last], timeout_s=30, what=f"seq {last}")
        assert recorder.check_contiguous()["last"] == last >= 1
    finally:
        recorder.close()


def test_expired_certificate_collects_and_heals_without_restart(
    broker: RunningBroker, tmp_path: Path
) -> None:
    car = tmp_path / "vehicle"
    car.mkdir()
    folder = pki.identity_dir(broker.certs, "device", "car-1")
    shutil.copy(pki.ca_cert_path(broker.certs), car / "ca.pem")
    shutil.copy(folder / "key.pem", car / "key.pem")
    expired_copy(broker.certs, "device", "car-1", car / "cert.pem")
    outbox = tmp_path / "car-1.sqlite"
    log = drive_log(tmp_path / "drive.blf", 120)
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""device: car-1
tls: {{ca: "{car / "ca.pem"}", cert: "{car / "cert.pem"}", key: "{car / "key.pem"}"}}
buses:
  - {{name: pt, databases: ["{TEST_DBC}"], replay: "{log}", speed: x4}}
outbox: {{path: "{outbox}"}}
mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_min_s: 0.2, reconnect_max_s: 2.0}}
"""
    )
    agent_log = tmp_path / "agent.log"
    recorder = Recorder(broker)
    agent = start_agent(config, agent_log)
    try:
        wait_for(lambda: _depth(outbox) >= 3, timeout_s=30, what="collection")
        text = agent_log.read_text()
        assert "not connecting" in text and "expired" in text and "certs renew" in text
        assert agent.poll() is None and recorder.seqs == []

        # Renewed on the CA host, copied into the car: the running agent delivers.
        _canvoy("certs", "renew", "device", "car-1", "--certs", broker.certs, "--days", "365")
        shutil.copyfile(folder / "cert.pem", car / "cert.pem")
        wait_for(lambda: len(recorder.seqs) >= 3, timeout_s=30, what="delivery after renewal")
        assert recorder.seqs[0] == 1  # what was collected while expired arrives too

        # Expired again while running: the next connection waits; collection goes on.
        expired_copy(broker.certs, "device", "car-1", car / "cert.pem")
        broker.broker.stop()
        with broker.log_path.open("ab") as out:
            broker.broker.start(log=out)
        before = open_status(outbox).counters["next_seq"]
        wait_for(
            lambda: open_status(outbox).counters["next_seq"] > before + 2,
            timeout_s=30,
            what="collection while expired",
        )
        assert agent_log.read_text().count("usable again") == 1
        shutil.copyfile(folder / "cert.pem", car / "cert.pem")
        wait_for(lambda: agent_log.read_text().count("usable again") == 2, what="second healing")
        assert stop(agent) == 0
        last = open_status(outbox).counters["next_seq"] - 1
        wait_for(lambda: recorder.seqs[-1:] == [last], timeout_s=30, what=f"seq {last}")
        assert recorder.check_contiguous()["last"] == last
        assert os.path.getsize(outbox) > 0
    finally:
        recorder.close()
        if agent.poll() is None:
            agent.kill()
