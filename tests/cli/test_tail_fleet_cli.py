"""``canvoy tail`` verifies and prints what devices send; ``canvoy sim fleet`` feeds a broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.transport.mqtt import Message
from tests.agentkit import REPO
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def test_tail_prints_verified_records_and_reports_forgeries(broker: RunningBroker) -> None:
    car = VirtualDevice.from_pki(broker.certs, "car-1")
    conn = broker.connect("device", "car-1")
    conn.publish(car.topic("status"), car.birth(), retain=True).result(5)
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "canvoy",
            "tail",
            "--certs",
            str(broker.certs),
            "--identity",
            "operator/ops",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--json",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        assert "following" in tail.stderr.readline()  # subscribed
        conn.publish(car.topic("telemetry"), b"\x93not an envelope").result(5)
        conn.publish(car.topic("telemetry"), car.telemetry({"pt/E/Rpm": [(1.0, 900.0)]})).result(5)
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0
    record = json.loads(out.splitlines()[0])
    assert (record["device"], record["series"]) == (
        "car-1",
        {"pt/E/Rpm": {"t_ms": [1000], "v": [900.0]}},
    )
    assert "rejected canvoy/v1/car-1/telemetry: malformed" in err


def test_sim_fleet_publishes_signed_batches(broker: RunningBroker) -> None:
    for i in (1, 2, 3):
        pki.issue(broker.certs, "device", f"sim-{i:04}")
    broker.broker.reload()  # the ACL learns the new devices
    received: list[Message] = []
    ops = broker.connect("operator", "ops", received=received)
    ops.subscribe([("canvoy/v1/+/telemetry", 1)])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "sim",
            "fleet",
            "--vehicles",
            "3",
            "--certs",
            str(broker.certs),
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--duration",
            "2",
            "--signals",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "published 6 batches (0 failed) from 3 vehicles" in done.stdout
    wait_for(lambda: len(received) == 6, what="6 batches")
    assert {m.topic.split("/")[2] for m in received} == {"sim-0001", "sim-0002", "sim-0003"}


def test_sim_fleet_says_why_new_devices_are_refused(broker: RunningBroker) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "sim",
            "fleet",
            "--vehicles",
            "1",
            "--certs",
            str(broker.certs),
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--duration",
            "1",
            "--prefix",
            "new",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "once its ACL is reloaded" in done.stdout
    assert "Not authorized" in done.stdout
    assert (Path(broker.certs) / "device" / "new-0001" / "cert.pem").exists()


def test_tail_piped_prints_whole_lines_at_the_signals_resolution(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Piped (not a terminal): no wrapping at 80 columns, and no float noise."""
    dbc = tmp_path / "long.dbc"
    long_signal = "OdometerWithAVeryLongNameThatNoTerminalOf80ColumnsWouldHoldOnOneLine"
    dbc.write_text(
        'VERSION ""\n\nBS_:\n\nBU_: GW\n\nBO_ 512 INSTRUMENT: 8 GW\n'
        f' SG_ {long_signal} : 0|32@1+ (0.1,0) [0|429496729.5] "km" GW\n\n'
    )
    car = VirtualDevice.from_pki(broker.certs, "car-1")
    conn = broker.connect("device", "car-1")
    conn.publish(car.topic("status"), car.birth(), retain=True).result(5)
    key = f"body/INSTRUMENT/{long_signal}"
    noisy = 421956 * 0.1  # 42195.600000000006, as raw * scale gives it
    assert repr(noisy) == "42195.600000000006"
    runs = {}
    for name, extra in (("dbc", ["--dbc", str(dbc)]), ("plain", [])):
        tail = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "canvoy",
                "tail",
                "--certs",
                str(broker.certs),
                "--identity",
                "operator/ops",
                "--broker",
                f"127.0.0.1:{broker.port}",
                "--count",
                "1",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "80"},
        )
        try:
            assert tail.stderr is not None
            assert "following" in tail.stderr.readline()
            conn.publish(car.topic("telemetry"), car.telemetry({key: [(1.0, noisy)]})).result(5)
            out, _err = tail.communicate(timeout=30)
        finally:
            if tail.poll() is None:
                tail.kill()
        assert tail.returncode == 0
        runs[name] = out.splitlines()
    for lines in runs.values():
        assert len(lines) == 1 and len(lines[0]) > 80  # one line, however long
        assert f"{key} = 42195.6  (1 samples)" in lines[0]
        assert "42195.600000000006" not in lines[0]
