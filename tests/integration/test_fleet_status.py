"""Acceptance 3 of issue 17: ``canvoy fleet status`` with agents running, killed and stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agentkit import REPO, agent_config, drive_log, start_agent, stop
from tests.conftest import RunningBroker
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def fleet_status(broker: RunningBroker, *more: str) -> dict[str, Any]:
    """``canvoy fleet status --json`` as an operator would run it; its devices by name."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "fleet",
            "status",
            "--certs",
            str(broker.certs),
            "--identity",
            "operator/ops",
            "--broker",
            f"127.0.0.1:{broker.port}",
            "--json",
            *more,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["rejected"] == []
    return {d["device"]: d for d in document["devices"]}


def states(broker: RunningBroker) -> dict[str, str]:
    return {name: d["state"] for name, d in fleet_status(broker).items()}


def start(broker: RunningBroker, tmp_path: Path, device: str) -> subprocess.Popen[bytes]:
    log = drive_log(tmp_path / f"{device}.log", 3.0)
    config = agent_config(
        tmp_path / f"{device}.yaml",
        broker,
        replay=log,
        device=device,
        speed="realtime",
        loop=True,
        mqtt="reconnect_min_s: 0.2, reconnect_max_s: 2.0, heartbeat_s: 1",
    )
    return start_agent(config, tmp_path / f"{device}-agent.log")


def test_two_devices_one_online_one_killed(broker: RunningBroker, tmp_path: Path) -> None:
    car1, car2 = start(broker, tmp_path, "car-1"), start(broker, tmp_path, "car-2")
    try:
        wait_for(
            lambda: states(broker) == {"car-1": "online", "car-2": "online"},
            60,
            "both devices online",
        )
        # A heartbeat refreshes "last seen" while "since" stays at the connection.
        first = fleet_status(broker)["car-1"]
        wait_for(
            lambda: fleet_status(broker)["car-1"]["last_seen_ms"] > first["last_seen_ms"],
            30,
            "a heartbeat",
        )
        again = fleet_status(broker)["car-1"]
        assert again["since_ms"] == first["since_ms"] == again["connected_ms"]
        assert again["agent"] and again["policy"] and again["overdue"] == 0

        car2.send_signal(signal.SIGKILL)
        car2.wait(10)
        wait_for(
            lambda: states(broker) == {"car-1": "online", "car-2": "offline"},
            30,
            "car-2 offline after SIGKILL",
        )
        killed = fleet_status(broker)["car-2"]
        assert killed["cause"] == "lost"
        assert killed["since_ms"] is None  # a retained will does not say when the link died
    finally:
        stop(car1)
        if car2.poll() is None:
            stop(car2)
    stopped = fleet_status(broker)["car-1"]
    assert (stopped["state"], stopped["cause"]) == ("offline", "goodbye")
    assert stopped["since_ms"] is not None


def test_a_frozen_agent_is_offline_by_heartbeat_age(broker: RunningBroker, tmp_path: Path) -> None:
    """SIGSTOP: the TCP connection stays up and the broker waits 1.5 keep-alives (45 s) before
    the will; the heartbeat's age says offline within 3 intervals."""
    car1 = start(broker, tmp_path, "car-1")
    try:
        wait_for(lambda: states(broker) == {"car-1": "online"}, 60, "car-1 online")
        car1.send_signal(signal.SIGSTOP)
        wait_for(lambda: states(broker) == {"car-1": "offline"}, 30, "car-1 silent")
        silent = fleet_status(broker)["car-1"]
        assert silent["cause"] == "silent"
        assert silent["since_ms"] == silent["last_seen_ms"]
        car1.send_signal(signal.SIGCONT)
        wait_for(lambda: states(broker) == {"car-1": "online"}, 30, "car-1 back")
    finally:
        car1.send_signal(signal.SIGCONT)
        assert stop(car1) == 0


def test_watch_dates_a_will_it_sees_arrive(broker: RunningBroker, tmp_path: Path) -> None:
    car1 = start(broker, tmp_path, "car-1")
    watch = subprocess.Popen(
        [
            *(sys.executable, "-m", "canvoy", "fleet", "status", "--certs", str(broker.certs)),
            *("--identity", "operator/ops", "--broker", f"127.0.0.1:{broker.port}"),
            *("--json", "--watch", "--interval", "0.3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert watch.stdout is not None
    try:

        def next_car1() -> dict[str, Any]:
            while True:
                line = watch.stdout.readline()  # type: ignore[union-attr]
                assert line, watch.stderr.read() if watch.stderr else "watch ended"
                devices = {d["device"]: d for d in json.loads(line)["devices"]}
                if "car-1" in devices:
                    car: dict[str, Any] = devices["car-1"]
                    return car

        while next_car1()["state"] != "online":
            pass
        car1.send_signal(signal.SIGKILL)
        car1.wait(10)
        killed_at_ms = time.time() * 1000
        while (seen := next_car1())["state"] != "offline":
            pass
        assert seen["cause"] == "lost"
        assert abs(seen["since_ms"] - killed_at_ms) < 5000  # when the will arrived
    finally:
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0
        if car1.poll() is None:
            stop(car1)
