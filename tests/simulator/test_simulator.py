"""The simulator: model values survive the DBC, scenarios fault on time, logs replay alike."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import can
import pytest

from canvoy.agent.buses import BusConfig
from canvoy.agent.collect import Sample
from canvoy.agent.database import build_index, load_databases
from canvoy.agent.decode import Decoder
from canvoy.agent.diagnostics import DiagnosticsConfig, DtcWatcher
from canvoy.agent.episodes import EpisodeTracker
from canvoy.agent.ingest import Ingest
from canvoy.agent.policy import load_policy
from canvoy.agent.source import read_log
from canvoy.config import build
from canvoy.errors import ConfigError
from canvoy.simulator.emit import DEMO_DBC, DEMO_HV_DBC, Drive, record, run_live
from canvoy.simulator.scenarios import load_scenario
from tests.agentkit import REPO

DATABASES = [DEMO_DBC, DEMO_HV_DBC]


def test_emitted_frames_decode_to_the_model_values() -> None:
    drive = Drive(load_scenario("normal"), seed=3)
    decoder = Decoder(build_index(load_databases(DATABASES)))
    db = {m.frame_id: m for path in DATABASES for m in load_databases([path])[0].messages}
    checked = 0
    for msg, values in drive.frames(60.0):
        assert values is not None
        decoded = decoder.decode(msg)
        assert decoded is not None, f"0x{msg.arbitration_id:X} does not decode"
        message = db[msg.arbitration_id]
        for name, value in values.items():
            signal = message.get_signal_by_name(name)
            got = decoded.signals[name]
            if isinstance(got, str):  # value-table text: compare the raw choice
                got = next(k for k, v in (signal.choices or {}).items() if str(v) == got)
            if "checksum" in name.lower():
                continue
            assert got == pytest.approx(value, abs=signal.scale / 2 + 1e-9), (message.name, name)
            checked += 1
    assert checked > 50_000


def test_the_model_is_physical() -> None:
    drive = Drive(load_scenario("normal"), seed=3)
    speeds, coolant = [], []
    for _msg, values in drive.frames(400.0):
        if values and "VehicleSpeed" in values:
            speeds.append(values["VehicleSpeed"])
        if values and "CoolantTemp" in values:
            coolant.append(values["CoolantTemp"])
    assert speeds[0] == 0 and max(speeds) > 100  # idle, then the motorway
    assert coolant[0] < 30 and 85 <= coolant[-1] <= 95  # warmed up to the thermostat


@pytest.mark.parametrize(
    ("scenario", "code", "earliest_s", "latest_s"),
    [
        ("overheat", "P0217", 90, 200),
        ("battery_ageing", "P0562", 0, 200),
        ("intermittent_sensor", "P0113", 60, 400),
    ],
)
def test_each_scenario_sets_its_fault_on_time(
    scenario: str, code: str, earliest_s: float, latest_s: float
) -> None:
    drive = Drive(load_scenario(scenario), seed=1)
    for _ in drive.frames(latest_s + 1):
        pass
    sets = [t for t, c, what in drive.faults.history if c == code and what == "set"]
    assert sets and earliest_s <= sets[0] <= latest_s


def test_overheat_clears_after_the_fan_comes_back() -> None:
    drive = Drive(load_scenario("overheat"), seed=1)
    for _ in drive.frames(600):
        pass
    assert [(c, w) for _t, c, w in drive.faults.history] == [("P0217", "set"), ("P0217", "clear")]


def test_the_same_seed_gives_the_same_drive_and_another_seed_does_not() -> None:
    def first(seed: int) -> list[bytes]:
        return [bytes(m.data) for m, _v in Drive(load_scenario("normal"), seed=seed).frames(5)]

    assert first(4) == first(4)
    assert first(4) != first(5)


@pytest.mark.parametrize(
    ("suffix", "scenario", "databases"),
    [
        (".blf", "bus_noise", DATABASES),
        (".asc", "bus_noise", DATABASES),
        (".log", "bus_noise", DATABASES),
        (".csv", "bus_noise", DATABASES),
        # python-can's TRC writer stores neither CAN FD nor error frames: classic CAN only.
        (".trc", "normal", [DEMO_DBC]),
    ],
)
def test_recorded_logs_replay_identically_in_every_format(
    tmp_path: Path, suffix: str, scenario: str, databases: list[Path]
) -> None:
    path = tmp_path / f"drive{suffix}"
    count = record(Drive(load_scenario(scenario), seed=2, databases=databases), path, 20.0)
    expected = [
        m for m, _v in Drive(load_scenario(scenario), seed=2, databases=databases).frames(20.0)
    ]
    frames = list(read_log(path))
    assert len(frames) == count == len(expected)
    for got, want in zip(frames, expected, strict=True):
        assert got.is_error_frame == want.is_error_frame
        if suffix != ".csv":  # python-can's CSV format keeps the bytes but not the FD flag
            assert got.is_fd == want.is_fd
        if not want.is_error_frame:
            assert (got.arbitration_id, bytes(got.data)) == (want.arbitration_id, bytes(want.data))
        assert got.timestamp == pytest.approx(want.timestamp, abs=1e-3)


def test_noise_is_counted_by_the_agent_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "noisy.blf"
    record(Drive(load_scenario("bus_noise"), seed=2), log, 30.0)
    bus = build(
        BusConfig,
        {"name": "car", "databases": [str(p) for p in DATABASES], "replay": str(log)},
        "bus",
    )
    samples: list[Sample] = []
    ingest = Ingest([bus], load_policy(None), samples.append)
    ingest.channels[0].thread = None
    ingest._replay(ingest.channels[0])  # in this thread
    stats = ingest.channels[0].collector.stats
    assert stats.error_frames > 0 and stats.malformed > 0 and stats.unknown_frames > 0
    assert samples


def test_the_agent_turns_the_dtc_broadcast_into_set_and_clear_events(tmp_path: Path) -> None:
    log = tmp_path / "overheat.blf"
    record(Drive(load_scenario("overheat"), seed=1), log, 600.0)
    events: list[Any] = []
    watcher = DtcWatcher(
        DiagnosticsConfig(), EpisodeTracker(lambda batch, _changes: events.extend(batch))
    )
    bus = build(
        BusConfig,
        {"name": "car", "databases": [str(p) for p in DATABASES], "replay": str(log)},
        "bus",
    )
    ingest = Ingest(
        [bus], load_policy(REPO / "dbc" / "demo_policy.yaml"), watcher.wrap(lambda _s: None)
    )
    ingest._replay(ingest.channels[0])
    watcher.tick(settle_s=0.0)
    assert [(e.code, e.state) for e in events] == [("P0217", "set"), ("P0217", "clear")]
    assert events[0].location  # the demo policy consents to (coarsened) location
    assert events[0].odometer_km
    assert events[0].episode == events[1].episode


def test_unknown_scenario_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"use one of .*overheat"):
        load_scenario("volcano")


def test_record_and_decode_show_the_coolant_climbing(tmp_path: Path) -> None:
    out = tmp_path / "x.blf"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "sim",
            "record",
            "--scenario",
            "overheat",
            "--duration",
            "300",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "P0217 set" in done.stdout
    decoded = subprocess.run(
        [
            sys.executable,
            "-m",
            "canvoy",
            "decode",
            str(out),
            "--dbc",
            str(DEMO_DBC),
            "--signals",
            "CoolantTemp",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert decoded.returncode == 0, decoded.stderr
    temps = [json.loads(line)["signals"]["CoolantTemp"] for line in decoded.stdout.splitlines()]
    assert temps[0] < 40 and max(temps) > 110


def test_live_run_on_a_virtual_bus_reaches_a_listener() -> None:
    sender = can.Bus(interface="virtual", channel="canvoy-sim-test")
    listener = can.Bus(interface="virtual", channel="canvoy-sim-test")
    try:
        drive = Drive(load_scenario("normal"), seed=1, databases=[DEMO_DBC])
        sent = run_live(drive, sender, None, 0.5, stop=threading.Event(), speed=5.0)
        got = [listener.recv(1.0) for _ in range(sent)]
        assert sent > 20 and all(m is not None for m in got)
    finally:
        sender.shutdown()
        listener.shutdown()
