"""The collection path: masked de-duplication, policy rates, consent and coarsening."""

from __future__ import annotations

from pathlib import Path

import can
import pytest
import yaml

from canvoy.agent.collect import Collector, Sample
from canvoy.agent.database import build_index, load_databases
from canvoy.agent.policy import Policy, PolicyConfig, load_policy
from canvoy.config import build
from canvoy.errors import ConfigError

TEST_DBC = Path(__file__).resolve().parents[1] / "data" / "test_vehicle.dbc"
INDEX = build_index(load_databases([TEST_DBC]))


def _policy(text: str) -> Policy:
    return Policy(build(PolicyConfig, yaml.safe_load(text), "policy"))


def _collector(policy: Policy) -> tuple[Collector, list[Sample]]:
    out: list[Sample] = []
    return Collector(bus="pt", index=INDEX, policy=policy, emit=out.append), out


def _engine(t: float, rpm: float, counter: int = 0, coolant: int = 80) -> can.Message:
    raw = int(rpm / 0.25)
    data = bytes([raw & 0xFF, raw >> 8, coolant + 40, 3, 0, 0, counter << 4, counter * 7 & 0xFF])
    return can.Message(timestamp=t, arbitration_id=0x100, data=data, is_extended_id=False)


def test_counter_and_checksum_alone_never_force_a_decode() -> None:
    collector, out = _collector(_policy("defaults: {heartbeat_s: 0}"))
    for i in range(100):
        collector.on_message_received(_engine(i * 0.01, 800.0, counter=i % 16))
    assert collector.stats.decoded == 1
    assert collector.stats.repeated == 99
    assert {s.key for s in out} == {"pt/ENGINE/EngineSpeed", "pt/ENGINE/Coolant", "pt/ENGINE/Gear"}


def test_integrity_signals_are_collected_when_asked_for() -> None:
    collector, out = _collector(
        _policy("collect: {integrity_signals: true}\ndefaults: {heartbeat_s: 0}")
    )
    for i in range(10):
        collector.on_message_received(_engine(i * 0.01, 800.0, counter=i))
    assert collector.stats.decoded == 10
    assert [s.value for s in out if s.key.endswith("COUNTER")] == list(range(10))


def test_deadband_min_interval_and_heartbeat_with_synthetic_time() -> None:
    policy = _policy(
        """
defaults: {heartbeat_s: 0}
collect: {include: ["pt/ENGINE/EngineSpeed"]}
rules:
  - {match: "pt/ENGINE/EngineSpeed", deadband: 50, min_interval_s: 1.0, heartbeat_s: 10}
"""
    )
    collector, out = _collector(policy)
    feed = [
        (0.0, 800.0),  # first value: reported
        (0.1, 820.0),  # inside the deadband: not reported
        (0.2, 900.0),  # a change, but inside min_interval: held back
        (0.3, 900.0),  # same bits: skipped by the mask, yet due at 1.0
        (1.05, 900.0),  # the held-back change is reported now
        (5.0, 900.0),  # unchanged, heartbeat not yet due
        (11.1, 900.0),  # heartbeat
    ]
    for t, rpm in feed:
        collector.on_message_received(_engine(t, rpm))
    assert [(s.t, s.value) for s in out] == [(0.0, 800.0), (1.05, 900.0), (11.1, 900.0)]


def test_sampling_mode_reports_every_interval_even_without_change() -> None:
    policy = _policy(
        """
collect: {include: ["pt/ENGINE/Coolant"]}
defaults: {on_change: false, min_interval_s: 1.0, heartbeat_s: 0}
"""
    )
    collector, out = _collector(policy)
    for i in range(31):
        collector.on_message_received(_engine(i * 0.1, 800.0))
    assert [s.t for s in out] == pytest.approx([0.0, 1.0, 2.0, 3.0])


def _gnss(t: float, lat: float, lon: float) -> can.Message:
    data = int(lat * 1e7).to_bytes(4, "little", signed=True) + int(lon * 1e7).to_bytes(
        4, "little", signed=True
    )
    return can.Message(timestamp=t, arbitration_id=0x500, data=data, is_extended_id=False)


def test_location_needs_consent_and_is_coarsened() -> None:
    classes = 'classes: {location: ["*/GNSS/*"]}\ndefaults: {heartbeat_s: 0}\n'
    refused, out = _collector(_policy(classes + "consent: {location: false}"))
    refused.on_message_received(_gnss(0.0, 48.1371234, 11.5753822))
    assert out == []
    assert refused.stats.repeated == 1  # nothing collected: not even decoded
    agreed, out = _collector(_policy(classes + "consent: {location: true}\nlocation_decimals: 2"))
    agreed.on_message_received(_gnss(0.0, 48.1371234, 11.5753822))
    assert sorted((s.key, s.value) for s in out) == [
        ("pt/GNSS/Latitude", 48.14),
        ("pt/GNSS/Longitude", 11.58),
    ]


def test_multiplexed_pages_are_tracked_separately() -> None:
    collector, out = _collector(_policy("defaults: {heartbeat_s: 0}"))
    page0 = bytes([0, 0x10, 0x0E, 0x20, 0x0E, 0, 0, 0])
    page1 = bytes([1, 0xF6, 30, 0, 0, 0, 0, 0])
    for i in range(10):
        data = page0 if i % 2 == 0 else page1
        collector.on_message_received(
            can.Message(timestamp=i, arbitration_id=0x300, data=data, is_extended_id=False)
        )
    assert collector.stats.decoded == 2
    assert {s.key for s in out} == {
        "pt/MUXED/Page",
        "pt/MUXED/CellVoltage1",
        "pt/MUXED/CellVoltage2",
        "pt/MUXED/CellTemp1",
        "pt/MUXED/CellTemp2",
    }


def test_policy_hash_changes_with_the_agreement() -> None:
    a = _policy("consent: {location: false}\nclasses: {location: ['*/GNSS/*']}")
    b = _policy("consent: {location: true}\nclasses: {location: ['*/GNSS/*']}")
    assert a.hash != b.hash and len(a.hash) == 64
    assert a.hash == _policy("classes: {location: ['*/GNSS/*']}\nconsent: {location: false}").hash


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("colect: {}", r"policy.colect: unknown key"),
        ("defaults: {deadband: -1}", r"policy.defaults.deadband: must be >= 0"),
        (
            "rules: [{match: a}, {match: b}, {match: c}, {match: '*', heartbeat_s: -1}]",
            r"^policy.rules\[3\].heartbeat_s: must be >= 0",
        ),
        ("rules: [{match: '*', min_interval_s: .inf}]", r"rules\[0\].min_interval_s: must be"),
        ("rules: [{match: ''}]", r"policy.rules\[0\].match: must not be empty"),
        ("defaults: {heartbeat_s: fast}", r"policy.defaults.heartbeat_s: expected a number"),
        ("classes: {location: ['*']}", "no answer for class"),
        ("rules: [{match: '*', speed: 1}]", r"policy.rules\[0\].speed: unknown key"),
        ("version: 2", "version 2 is not supported"),
    ],
)
def test_invalid_policies_name_the_key(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _policy(text)


def test_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read policy"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("collect: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_policy(bad)
