"""The generated mosquitto.conf: the most durable persistence unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from canvoy.broker.config import BrokerSettings, render_conf
from canvoy.errors import ConfigError


def test_the_broker_saves_after_every_change_by_default(tmp_path: Path) -> None:
    lines = render_conf(BrokerSettings(certs=tmp_path, port=8884, data=tmp_path)).splitlines()
    assert {"persistence true", "autosave_on_changes true", "autosave_interval 1"} <= set(lines)
    assert not [line for line in lines if line.startswith("autosave_interval 30")]


def test_autosave_changes_is_passed_on_and_checked(tmp_path: Path) -> None:
    settings = BrokerSettings(certs=tmp_path, port=8884, data=tmp_path, autosave_changes=1000)
    assert "autosave_interval 1000" in render_conf(settings).splitlines()
    with pytest.raises(ConfigError, match="--autosave-changes 0 must be >= 1"):
        BrokerSettings(certs=tmp_path, port=8884, data=tmp_path, autosave_changes=0)
