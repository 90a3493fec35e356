"""``canvoy fleet status`` against hostile and broken status messages and bad invocations."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest

from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire import body
from canvoy.wire.envelope import Envelope, sign
from tests.agentkit import REPO
from tests.conftest import RunningBroker, free_port

pytestmark = pytest.mark.integration


def fleet(certs: Path, broker: str, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "canvoy", "fleet", "status"),
            *("--certs", str(certs), "--broker", broker, *more),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def document(broker: RunningBroker) -> dict[str, object]:
    done = fleet(broker.certs, f"127.0.0.1:{broker.port}", "--identity", "operator/ops", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def retain(broker: RunningBroker, device: str, payload: bytes) -> None:
    conn = broker.connect("device", device)
    conn.publish(f"canvoy/v1/{device}/status", payload, retain=True).result(10)
    conn.close()


def test_forged_and_broken_statuses_are_reported_not_listed(broker: RunningBroker) -> None:
    car1 = VirtualDevice.from_pki(broker.certs, "car-1")
    car2 = VirtualDevice.from_pki(broker.certs, "car-2")
    retain(broker, "car-1", car1.birth())
    # car-2 publishes, on its own topic, a status carrying car-1's certificate.
    impostor = body.Status(state="online", agent="x", policy="p", cert_pem=car1.cert_pem)
    retain(broker, "car-2", car2.seal("status", body.status_content(impostor), seq=0))
    doc = document(broker)
    devices = doc["devices"]
    assert isinstance(devices, list)
    assert [d["device"] for d in devices] == ["car-1"]
    rejected = doc["rejected"]
    assert isinstance(rejected, list) and len(rejected) == 1
    assert "canvoy/v1/car-2/status: identity_mismatch" in rejected[0]

    ahead = Envelope(
        device="car-2",
        boot=car2.boot,
        seq=0,
        kind="status",
        created_ms=int(time.time() * 1000) + 3 * 86_400_000,
        encoding="none",
        body=bytes(msgpack.packb(body.status_content(replace(impostor, cert_pem=car2.cert_pem)))),
    )
    retain(broker, "car-2", sign(ahead, car2.key))  # "online" for ever, were it believed
    doc = document(broker)
    assert "'device': 'car-2'" not in str(doc["devices"])
    assert "ahead of this clock" in str(doc["rejected"])

    retain(broker, "car-2", b"\x00garbage")
    assert "malformed" in str(document(broker)["rejected"])

    retain(broker, "car-1", b"")  # the retained status cleared: the device is forgotten
    retain(broker, "car-2", b"")
    assert document(broker) | {"generated_ms": 0} == {
        "generated_ms": 0,
        "devices": [],
        "rejected": [],
        "rejected_total": 0,
    }


def test_a_table_on_a_terminal_and_a_pipe(broker: RunningBroker) -> None:
    retain(broker, "car-1", VirtualDevice.from_pki(broker.certs, "car-1").birth())
    done = fleet(broker.certs, f"127.0.0.1:{broker.port}", "--identity", "operator/ops")
    assert done.returncode == 0, done.stderr
    assert "1 device(s), 1 online" in done.stdout and "car-1" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--identity", "device/car-1"], "--identity 'device/car-1' must be operator/NAME"),
        (["--identity", "operator/nobody"], "nobody"),
        (["--identity", "operator/ops", "--interval", "0", "--watch"], "--interval"),
    ],
)
def test_bad_invocations_get_one_line(broker: RunningBroker, args: list[str], message: str) -> None:
    done = fleet(broker.certs, f"127.0.0.1:{broker.port}", *args)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_unreachable_broker_is_one_line(broker: RunningBroker) -> None:
    done = fleet(broker.certs, f"127.0.0.1:{free_port()}", "--identity", "operator/ops")
    assert done.returncode != 0
    assert "cannot reach broker" in done.stderr and "Traceback" not in done.stderr
