"""ISO-TP on a real UDS log, and the agent's OBD-II client against the simulator's ECU."""

from __future__ import annotations

import random
from typing import Any

import can
import pytest

from canvoy.agent.collect import Sample
from canvoy.agent.episodes import EpisodeTracker
from canvoy.agent.isotp import reassemble
from canvoy.agent.obd import ObdConfig, ObdPoller, parse_dtcs, parse_pid
from canvoy.agent.source import read_log
from canvoy.errors import ConfigError, TransportError
from canvoy.simulator.model import Vehicle
from canvoy.simulator.obd import ObdEcu
from tests.conftest import SHARED_DATA

UDS_LOG = SHARED_DATA / "uds_isotp_00000170.log"


@pytest.mark.skipif(not UDS_LOG.exists(), reason=f"real UDS/ISO-TP log not present: {UDS_LOG}")
def test_uds_responses_of_a_real_log_are_reassembled() -> None:
    frames = list(read_log(UDS_LOG))
    for rxid, size, did in ((0x7BB, 38, b"\x62\x01\x00"), (0x7EC, 62, b"\x62\x01\x01")):
        # Count the first frames whose consecutive frames are all in the log.
        complete, following = 0, None
        for f in frames:
            if f.arbitration_id != rxid:
                continue
            if f.data[0] >> 4 == 1:
                following = 0
            elif f.data[0] >> 4 == 2 and following is not None:
                following += 1
                if 6 + 7 * following >= size:
                    complete += 1
                    following = None
        payloads = reassemble(frames, rxid)
        assert len(payloads) == complete > 100
        assert all(len(p) == size and p.startswith(did) for p in payloads)  # UDS 0x22 answers


def test_pid_and_dtc_formulas() -> None:
    assert parse_pid(0x0C, bytes([0x41, 0x0C, 0x1A, 0xF8])) == 1726.0
    assert parse_pid(0x05, bytes([0x41, 0x05, 0x7B])) == 83
    assert parse_dtcs(0x03, bytes([0x43, 0x02, 0x02, 0x17, 0xC1, 0x00])) == ["P0217", "U0100"]
    with pytest.raises(TransportError):
        parse_pid(0x0D, bytes([0x7F, 0x01, 0x12]))
    with pytest.raises(ConfigError, match="PID 'ZZ' is not supported"):
        ObdConfig(pids={"ZZ": 1.0})


def test_the_agent_reads_pids_and_dtcs_from_the_simulated_ecu() -> None:
    channel = f"canvoy-obd-{random.randrange(1 << 30)}"
    ecu_bus = can.Bus(interface="virtual", channel=channel)
    tester_bus = can.Bus(interface="virtual", channel=channel)
    vehicle = Vehicle(rng=random.Random(1), speed_kmh=87.0, rpm=2450.0, coolant=118.0)
    vehicle.dtcs = ["P0217"]
    ecu = ObdEcu(ecu_bus, vehicle, pending=["P0128"], permanent=["P0217", "U0100"])
    ecu.start()
    samples: list[Sample] = []
    events: list[Any] = []
    notifier = can.Notifier(tester_bus, [])
    poller = ObdPoller(
        "obd",
        tester_bus,
        notifier,
        ObdConfig(timeout_s=2.0),
        emit=samples.append,
        episodes=EpisodeTracker(lambda batch, _changes: events.extend(batch)),
    )
    try:
        assert poller.discover() == [0]
        assert poller.poll_pid(0, 0x0C) == 2450.0
        assert poller.poll_pid(0, 0x0D) == 87
        assert poller.poll_pid(0, 0x05) == 118
        assert poller.poll_pid(0, 0x10) is None  # not supported: a negative response, counted
        assert poller.stats.negative == 1
        assert poller.read_dtcs(0) == {
            "stored": ["P0217"],
            "pending": ["P0128"],
            "permanent": ["P0217", "U0100"],
        }
        vehicle.dtcs = []
        poller.read_dtcs(0)
    finally:
        poller.stop()
        notifier.stop()
        ecu.stop()
        ecu_bus.shutdown()
        tester_bus.shutdown()
    assert [s.key for s in samples] == [
        "obd/OBD_7E8/EngineSpeed",
        "obd/OBD_7E8/VehicleSpeed",
        "obd/OBD_7E8/CoolantTemp",
    ]
    # One episode per code: stored (and permanent) P0217 opens and closes; pending P0128 opens.
    assert [(e.code, e.state, e.dtc_status) for e in events] == [
        ("P0128", "set", ["pending"]),
        ("P0217", "set", ["stored", "permanent"]),
        ("P0217", "clear", None),
    ]
    assert events[1].episode == events[2].episode != events[0].episode


def test_a_silent_bus_times_out_and_is_counted() -> None:
    bus = can.Bus(interface="virtual", channel=f"canvoy-obd-{random.randrange(1 << 30)}")
    notifier = can.Notifier(bus, [])
    poller = ObdPoller(
        "obd",
        bus,
        notifier,
        ObdConfig(timeout_s=0.2),
        emit=lambda _s: None,
        episodes=EpisodeTracker(lambda _e, _c: None),
    )
    try:
        assert poller.discover() == []
        assert poller.poll_pid(0, 0x0C) is None
        assert poller.stats.timeouts == 1
    finally:
        poller.stop()
        notifier.stop()
        bus.shutdown()
