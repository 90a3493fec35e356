"""Multi-frame messages decode with the database: ISO-TP (UDS) and J1939 transport, in
``canvoy decode`` and in the agent's collection path, on real logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from canvoy.agent.buses import driver_filters
from canvoy.agent.collect import Collector, Sample
from canvoy.agent.database import build_index, load_databases
from canvoy.agent.j1939 import Reassembler
from canvoy.agent.multiframe import Transport
from canvoy.agent.policy import Policy, PolicyConfig
from canvoy.agent.source import read_log
from canvoy.config import build
from tests.conftest import SHARED_DATA

UDS_DBC = SHARED_DATA / "tp_uds.dbc"
UDS_LOG = SHARED_DATA / "uds_isotp_00000170.log"
TP_LOG = SHARED_DATA / "j1939_tp_00000001.log"
EC1_DBC = Path(__file__).resolve().parents[1] / "data" / "j1939_ec1.dbc"  # PGN 0xFEE3
needs_shared = pytest.mark.skipif(not UDS_LOG.exists(), reason=f"{SHARED_DATA} is absent")


def _decode(*args: str | Path) -> tuple[list[dict[str, Any]], str]:
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", "decode", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@needs_shared
def test_decode_prints_every_complete_uds_response_of_the_log() -> None:
    rows, summary = _decode("--dbc", UDS_DBC, UDS_LOG)
    names = [r["name"] for r in rows]
    assert (names.count("Battery"), names.count("Temperature")) == (120, 150)
    battery = next(r for r in rows if r["name"] == "Battery")
    # 0x7EC 10 3E 62 01 01 FF F7 E7 | 21 FF 64 ...: service 0x62, DID 0x0101, SoC 0x64 * 0.5
    assert battery["id"] == "7EC"  # hexadecimal, as candump prints it
    assert battery["signals"] == {
        "service": 0x62,
        "response": 0x0101,
        "M_SID_0x220101_StateOfChargeBMS": 50.0,
    }
    assert "multi-frame 270" in summary and "malformed 0" in summary
    assert "WARNING" not in summary  # interrupted receptions are counted, not logged


@needs_shared
def test_decode_j1939_prints_the_reassembled_messages_decoded() -> None:
    rows, summary = _decode("--j1939", "--dbc", EC1_DBC, TP_LOG)
    assert [r["name"] for r in rows] == ["EC1"] * 13
    assert {r["sa"] for r in rows} == {0}
    # The same values as cantools gives for the payloads the J1939 reassembler rebuilds.
    db = cantools.database.load_file(str(EC1_DBC))
    assert isinstance(db, cantools.database.can.Database)
    reassembler = Reassembler()
    payloads = [
        done[2]
        for f in read_log(TP_LOG)
        if (done := reassembler.feed(f)) is not None and done[0] == 0xFEE3
    ]
    assert [r["signals"] for r in rows] == [
        db.decode_message("EC1", p, decode_choices=True, allow_truncated=True) for p in payloads
    ]
    assert rows[0]["signals"]["EngReferenceTorque"] == 630
    assert "multi-frame 16 (80 frames)" in summary  # 13 EC1 and 3 VIN transfers


def _policy(text: str) -> Policy:
    return Policy(build(PolicyConfig, yaml.safe_load(text), "policy"))


@needs_shared
def test_the_agent_collects_uds_responses_with_the_policy_rules() -> None:
    index = build_index(load_databases([UDS_DBC]))
    policy = _policy("collect: {include: ['car/Battery/*SoC*', 'car/Battery/*StateOfCharge*']}")
    out: list[Sample] = []
    collector = Collector(bus="car", index=index, policy=policy, emit=out.append)
    for msg in read_log(UDS_LOG):
        collector.on_message_received(msg)
    assert collector.stats.reassembled == 270 and collector.stats.malformed == 0
    keys = {s.key for s in out}
    assert keys == {"car/Battery/M_SID_0x220101_StateOfChargeBMS"}
    # On change, with the policy's default heartbeat: far fewer samples than responses.
    assert 1 <= len(out) < 120
    assert {s.value for s in out} <= {x / 2 for x in range(201)}


@needs_shared
def test_the_agent_collects_reassembled_j1939_messages_by_pgn() -> None:
    index = build_index(load_databases([EC1_DBC]), j1939=True)
    policy = _policy("defaults: {on_change: false, min_interval_s: 0}")
    out: list[Sample] = []
    collector = Collector(bus="truck", index=index, policy=policy, emit=out.append)
    for msg in read_log(TP_LOG):
        collector.on_message_received(msg)
    torque = [s for s in out if s.key == "truck/EC1/EngReferenceTorque@00"]
    assert [s.value for s in torque] == [630] * 13


def test_driver_filters_of_a_j1939_bus_pass_transport_and_dm1_frames() -> None:
    index = build_index(load_databases([EC1_DBC]), j1939=True)
    channel = "canvoy-test-tp-filters"
    rx = can.Bus(interface="virtual", channel=channel, can_filters=driver_filters(index))
    tx = can.Bus(interface="virtual", channel=channel)
    try:
        # TP.CM and TP.DT (to all, and to 0x21), DM1 and EC1 pass; another PGN does not.
        for arb in (0x1CECFF00, 0x1CEBFF00, 0x1CEB2100, 0x18FECA00, 0x18FEE300, 0x18FEEE00):
            tx.send(can.Message(arbitration_id=arb, data=b"\x00" * 8))
        got = []
        while (msg := rx.recv(0.2)) is not None:
            got.append(msg.arbitration_id)
        assert got == [0x1CECFF00, 0x1CEBFF00, 0x1CEB2100, 0x18FECA00, 0x18FEE300]
    finally:
        rx.shutdown()
        tx.shutdown()


_frames = st.lists(
    st.builds(
        can.Message,
        arbitration_id=st.sampled_from([0x7E8, 0x1CECFF00, 0x1CEBFF00, 0x18ECFF21]),
        is_extended_id=st.booleans(),
        data=st.binary(min_size=0, max_size=8),
        timestamp=st.floats(0, 100),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(_frames)
def test_any_frames_are_reassembled_or_ignored_never_raised(frames: list[can.Message]) -> None:
    transport = Transport()
    for f in frames:
        if f.is_extended_id:
            done = transport.j1939(f)
            assert done is None or len(done[1]) <= 1785
        else:
            assert all(len(p) <= 4096 for p in transport.isotp(f))
