"""The configs `agent init` and `bridge init` write are complete (every key the code reads),
commented, and their relative paths are what their header says: relative to the file."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from canvoy.agent.config import AgentConfig
from canvoy.agent.config import load_config as load_agent
from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.config import load_config as load_bridge
from canvoy.bridge.sinks.jsonl import JsonlConfig
from canvoy.bridge.sinks.mqtt import MqttSinkConfig
from canvoy.bridge.sinks.nats import NatsConfig
from canvoy.bridge.sinks.webhook import WebhookConfig
from canvoy.cli import main
from tests.agentkit import TEST_DBC, drive_log
from tests.docs.test_config_doc import _nested

SINKS = {"jsonl": JsonlConfig, "webhook": WebhookConfig, "mqtt": MqttSinkConfig, "nats": NatsConfig}


def missing(cls: type[Any], data: dict[str, Any], path: str = "") -> list[str]:
    """The keys of ``cls`` (recursively, where ``data`` holds a section) that ``data`` lacks."""
    hints = typing.get_type_hints(cls)
    gaps = []
    for f in dataclasses.fields(cls):
        key = f"{path}{f.name}"
        if f.name not in data:
            gaps.append(key)
            continue
        inner, value = _nested(hints[f.name]), data[f.name]
        if inner is None or value is None:
            continue
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            gaps += missing(inner, item, f"{key}[{i}]." if isinstance(value, list) else f"{key}.")
    return gaps


def _agent_init(pki_dir: Path, out: Path, *source: str) -> dict[str, Any]:
    code = main(
        [
            "agent",
            "init",
            "--device",
            "car-1",
            "--certs",
            str(pki_dir),
            "--broker",
            "mq.local",
            "--dbc",
            str(TEST_DBC),
            *source,
            "--outbox",
            str(out.parent / "box.sqlite"),
            "-o",
            str(out),
        ]
    )
    assert code == 0
    data: dict[str, Any] = yaml.safe_load(out.read_text())
    return data


@pytest.mark.parametrize("live", [True, False], ids=["bus", "replay"])
def test_agent_init_writes_every_key(pki_dir: Path, tmp_path: Path, live: bool) -> None:
    log = drive_log(tmp_path / "drive.asc", 5)
    source = ["--bus", "socketcan:can0"] if live else ["--replay", str(log), "--speed", "10"]
    data = _agent_init(pki_dir, tmp_path / "conf" / "agent.yaml", *source)
    assert missing(AgentConfig, data) == []
    assert data["mqtt"]["port"] == 8883  # --broker without a port
    assert live or data["buses"][0]["speed"] == "x10"  # one spelling in the file


def test_bridge_init_writes_every_key_of_every_sink(pki_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "conf" / "bridge.yaml"
    code = main(
        [
            "bridge",
            "init",
            "--certs",
            str(pki_dir),
            "--identity",
            "bridge/b1",
            "--broker",
            "[::1]",
            "--jsonl",
            str(tmp_path / "conf" / "records.jsonl"),
            "--webhook",
            "https://desk.example/hook",
            "--webhook-secret-file",
            str(tmp_path / "conf" / "desk.secret"),
            "--nats",
            "nats://127.0.0.1:4222",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    data = yaml.safe_load(out.read_text())
    assert missing(BridgeConfig, data) == []
    assert data["broker"] == {"host": "::1", "port": 8883, "keepalive_s": 30}
    assert {o["type"] for o in data["sinks"].values()} == set(SINKS)
    for name, options in data["sinks"].items():
        rest = {k: v for k, v in options.items() if k != "type"}
        assert missing(SINKS[options["type"]], rest, f"sinks.{name}.") == []


def test_init_configs_say_what_they_hold(pki_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "agent.yaml"
    _agent_init(pki_dir, out, "--bus", "socketcan:can0")
    text = out.read_text()
    assert text.startswith("# canvoy agent config, written by 'canvoy agent init'")
    assert f"canvoy agent run --config {out}" in text
    sections = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    lines = text.splitlines()
    for section in sections:  # every top-level key has a comment above it or beside it
        i = lines.index(section)
        assert "#" in section or lines[i - 1].startswith("#"), section


def test_relative_paths_are_relative_to_the_file(pki_dir: Path, tmp_path: Path) -> None:
    """Files under the config's folder are written relative to it: the folder can move."""
    folder = tmp_path / "site"
    shutil.copytree(pki_dir, folder / "pki")
    shutil.copy(TEST_DBC, folder / "car.dbc")
    out = folder / "agent.yaml"
    assert (
        main(
            [
                "agent",
                "init",
                "--device",
                "car-1",
                "--certs",
                str(folder / "pki"),
                "--broker",
                "mq.local",
                "--dbc",
                str(folder / "car.dbc"),
                "--bus",
                "virtual:x",
                "--outbox",
                str(folder / "box.sqlite"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    data = yaml.safe_load(out.read_text())
    assert data["tls"]["ca"] == "pki/ca.pem" and data["buses"][0]["databases"] == ["car.dbc"]
    assert data["outbox"]["path"] == "box.sqlite"
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    config = load_agent(moved / "agent.yaml")
    assert config.tls.ca == moved / "pki" / "ca.pem" and config.tls.ca.is_file()
    assert config.buses[0].databases == (moved / "car.dbc",)
    # What lies outside the folder stays absolute.
    bridge = tmp_path / "b" / "bridge.yaml"
    assert (
        main(
            [
                "bridge",
                "init",
                "--certs",
                str(pki_dir),
                "--identity",
                "bridge/b1",
                "--broker",
                "localhost",
                "-o",
                str(bridge),
            ]
        )
        == 0
    )
    assert yaml.safe_load(bridge.read_text())["tls"]["ca"] == str((pki_dir / "ca.pem").resolve())
    assert load_bridge(bridge).quarantine == (bridge.parent / "quarantine.jsonl").resolve()
