"""Certificate renewal in the field: how soon a waiting agent delivers after the new file lands.

Run: python bench/renewal.py [--trials N]. An agent starts with an expired certificate (its own
key) against a real Mosquitto, collects into its outbox, then a renewed certificate is copied
over the file; the time from the copy to the first acknowledged envelope is measured. Also
printed: the cost of the per-second check of unchanged files (what a waiting agent spends).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()

import can
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.config import load_config
from canvoy.agent.credentials import Credentials
from canvoy.agent.service import Agent
from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import enrol, pki
from canvoy.wire.tls import TlsFiles
from tests.identitykit import expired_copy

REPO = Path(__file__).resolve().parents[1]
DBC = REPO / "tests" / "data" / "test_vehicle.dbc"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drive(path: Path) -> Path:
    with can.Logger(str(path)) as logger:
        for i in range(100_000):
            rpm = (800 + (i * 7) % 5000) * 4
            data = bytes([rpm & 0xFF, rpm >> 8, 120, 1, 0, 0, i % 16, 0])
            logger.on_message_received(
                can.Message(timestamp=1.7e9 + i * 0.01, arbitration_id=0x100, data=data)
            )
    return path


def _trial(root: Path, certs: Path, port: int, log: Path, n: int) -> float:
    car = root / f"car{n}"
    car.mkdir()
    shutil.copy(pki.ca_cert_path(certs), car / "ca.pem")
    shutil.copy(pki.identity_dir(certs, "device", "car-1") / "key.pem", car / "key.pem")
    expired_copy(certs, "device", "car-1", car / "cert.pem")
    config = car / "agent.yaml"
    config.write_text(
        f"""device: car-1
tls: {{ca: "{car / "ca.pem"}", cert: "{car / "cert.pem"}", key: "{car / "key.pem"}"}}
buses:
  - {{name: pt, databases: ["{DBC}"], replay: "{log}", speed: realtime}}
outbox: {{path: "{car / "outbox.sqlite"}", sync: normal}}
mqtt: {{host: 127.0.0.1, port: {port}}}
shutdown_timeout_s: 1
"""
    )
    agent = Agent(load_config(config))
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while agent.outbox.depth() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    renewed = enrol.renew(certs, "device", "car-1", days=365)
    copied = time.monotonic()
    shutil.copyfile(renewed.cert_path, car / "cert.pem")
    while agent.publisher.stats.acked == 0 and time.monotonic() < copied + 30:
        time.sleep(0.005)
    took = time.monotonic() - copied
    agent.stop()
    runner.join(20)
    return took


def _check_cost(root: Path, certs: Path) -> float:
    car = root / "check"
    car.mkdir()
    for name in ("cert.pem", "key.pem"):
        shutil.copy(pki.identity_dir(certs, "device", "car-1") / name, car / name)
    shutil.copy(pki.ca_cert_path(certs), car / "ca.pem")
    key = serialization.load_pem_private_key((car / "key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    files = TlsFiles(ca=car / "ca.pem", cert=car / "cert.pem", key=car / "key.pem")
    creds = Credentials("car-1", files, key, (car / "cert.pem").read_text())
    creds.load()
    now = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    for _ in range(10_000):
        creds.load(now)
    return (time.perf_counter() - start) / 10_000


def main() -> None:
    """Print the delay from copying a renewed certificate to the first acknowledged envelope."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("canvoy").setLevel(logging.CRITICAL)  # the waiting agent's errors
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = root / "pki"
        pki.init_ca(certs)
        pki.issue(certs, "broker", "broker", hosts=["localhost", "127.0.0.1"])
        pki.issue(certs, "device", "car-1")
        port = _port()
        broker = Broker(BrokerSettings(certs=certs, port=port, data=root / "broker-data"))
        with (root / "mosquitto.log").open("wb") as broker_log:
            broker.start(log=broker_log)
            try:
                log = _drive(root / "drive.asc")
                delays = [_trial(root, certs, port, log, n) for n in range(args.trials)]
            finally:
                broker.stop()
        cost = _check_cost(root, certs)
    print(f"trials: {args.trials}")
    print(
        f"renewed certificate copied -> first acknowledged envelope: median "
        f"{statistics.median(delays):.2f} s, max {max(delays):.2f} s"
    )
    print(f"check of unchanged files (stat x3 + dates): {cost * 1e6:.1f} us per call, once per s")


if __name__ == "__main__":
    main()
