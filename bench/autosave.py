"""What Mosquitto's save-on-every-change costs: acknowledged QoS 1 publishes/s per setting.

Run: python bench/autosave.py [--messages N] [--offline] [CHANGES ...]. For each
``--autosave-changes`` value (default 1, 100, 1000, 1000000) it starts ``canvoy broker``'s
Mosquitto config, subscribes a bridge identity to the shared telemetry subscription (with
``--offline`` its session then goes away, so every message queues in the broker's database), and
publishes N messages of 2 KB from a device with 20 in flight, timing until the last PUBACK.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()

from canvoy.broker.config import BrokerSettings
from canvoy.broker.process import Broker
from canvoy.certs import pki
from canvoy.transport.mqtt import Connection

TOPIC = "canvoy/v1/car-1/telemetry"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rate(root: Path, certs: Path, changes: int, messages: int, offline: bool) -> float:
    port = _port()
    data = root / f"broker-{changes}"
    broker = Broker(BrokerSettings(certs=certs, port=port, data=data, autosave_changes=changes))
    with (root / "mosquitto.log").open("ab") as log:
        broker.start(log=log)
    try:
        bridge = Connection(
            client_id="b1",
            tls=pki.tls_files(certs, "bridge", "b1").context(),
            clean_start=False,
            session_expiry_s=3600,
            on_message=lambda _m: None,
        )
        bridge.connect("127.0.0.1", port)
        bridge.subscribe([("$share/canvoy/canvoy/v1/+/telemetry", 1)])
        if offline:
            bridge.close()
        device = Connection(
            client_id="car-1", tls=pki.tls_files(certs, "device", "car-1").context()
        )
        device.connect("127.0.0.1", port)
        payload = b"x" * 2000
        window: list[Future[None]] = []
        start = time.perf_counter()
        for _ in range(messages):
            window.append(device.publish(TOPIC, payload))
            if len(window) >= 20:
                window.pop(0).result(120)
        for fut in window:
            fut.result(120)
        seconds = time.perf_counter() - start
        device.close()
        if not offline:
            bridge.close()
    finally:
        broker.stop()
    return messages / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("changes", type=int, nargs="*", default=[1, 100, 1000, 1_000_000])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--offline", action="store_true", help="the bridge's session offline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="canvoy-autosave-") as tmp:
        root = Path(tmp)
        certs = root / "pki"
        pki.init_ca(certs)
        pki.issue(certs, "broker", "broker", hosts=["127.0.0.1"])
        pki.issue(certs, "device", "car-1")
        pki.issue(certs, "bridge", "b1")
        where = "queued for an offline bridge" if args.offline else "to a connected bridge"
        print(f"{args.messages:,} QoS 1 publishes of 2 KB, {where}")
        for changes in args.changes:
            rate = _rate(root, certs, changes, args.messages, args.offline)
            print(f"  --autosave-changes {changes:>9,}  {rate:>9,.0f} publishes/s acknowledged")


if __name__ == "__main__":
    main()
