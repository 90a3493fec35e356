"""Buses from config: replayed logs (looping) and a live virtual bus feed their collectors."""

from __future__ import annotations

from pathlib import Path

import can
import pytest

from canvoy.agent.buses import BusConfig
from canvoy.agent.collect import Sample
from canvoy.agent.ingest import Ingest
from canvoy.agent.policy import load_policy
from canvoy.agent.source import ReplayStats, replay_frames
from canvoy.config import build
from canvoy.errors import ConfigError
from tests.agent.test_decode import TEST_DBC
from tests.waiting import wait_for


def _engine_log(path: Path, n: int = 20) -> Path:
    with can.Logger(str(path)) as logger:
        for i in range(n):
            logger.on_message_received(
                can.Message(
                    timestamp=1_700_000_000 + i * 0.01,
                    arbitration_id=0x100,
                    is_extended_id=False,
                    data=bytes([i, 0, 120, 3, 0, 0, 0, 0]),
                )
            )
    return path


def test_looping_replay_keeps_time_moving_forward(tmp_path: Path) -> None:
    log = _engine_log(tmp_path / "a.log", 5)
    frames = replay_frames(log, loop=True, stats=ReplayStats())
    times = [next(frames).timestamp for _ in range(12)]
    assert times == sorted(times) and len(set(times)) == 12


def test_replay_and_live_buses_from_config(tmp_path: Path) -> None:
    log = _engine_log(tmp_path / "drive.blf")
    buses = [
        build(BusConfig, {"name": "pt", "databases": [str(TEST_DBC)], "replay": str(log)}, "b"),
        build(
            BusConfig,
            {
                "name": "live",
                "databases": [str(TEST_DBC)],
                "interface": "virtual",
                "channel": "canvoy-ingest",
            },
            "buses[1]",
        ),
    ]
    samples: list[Sample] = []
    ingest = Ingest(buses, load_policy(None), samples.append)
    ingest.start()
    sender = can.Bus(interface="virtual", channel="canvoy-ingest")
    try:
        wait_for(
            lambda: (
                ingest.channels[0].thread is not None and not ingest.channels[0].thread.is_alive()
            ),
            what="replay end",
        )
        wait_for(
            lambda: (
                ingest.channels[1].supervisor is not None
                and ingest.channels[1].supervisor.bus is not None
            ),
            what="live bus open",
        )
        sender.send(
            can.Message(
                arbitration_id=0x100,
                is_extended_id=False,
                data=bytes([0x40, 0x1F, 120, 3, 0, 0, 0, 0]),
            )
        )
        wait_for(lambda: any(s.key.startswith("live/") for s in samples), what="live sample")
    finally:
        sender.shutdown()
        ingest.stop()
    speeds = [s.value for s in samples if s.key == "pt/ENGINE/EngineSpeed"]
    assert speeds == [i * 0.25 for i in range(20)]
    assert ("live/ENGINE/EngineSpeed", 2000.0) in [(s.key, s.value) for s in samples]


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"name": "pt", "databases": ["x.dbc"]}, "either 'interface' and 'channel'"),
        ({"name": "pt", "databases": ["x.dbc"], "interface": "socketcan"}, "needs both"),
        ({"name": "pt", "databases": [], "replay": "a.log"}, "at least one file"),
        ({"name": "p t", "databases": ["x.dbc"], "replay": "a.log"}, "bus name 'p t' is invalid"),
        ({"name": "pt", "databases": ["x.dbc"], "replay": "a.pcap"}, "unknown format"),
        ({"name": "pt", "databases": ["x.dbc"], "replay": "a.log", "speed": "fast"}, "xN"),
        ({"name": "pt", "databases": ["x.dbc"], "replay": "a.log", "bitrat": 5}, "bitrat: unknown"),
    ],
)
def test_bad_bus_entries_name_the_problem(entry: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(BusConfig, entry, "buses[0]")
