"""The bridge's state file: the replay window it restores keeps each device's latest boots."""

from __future__ import annotations

from pathlib import Path

import pytest

from canvoy.bridge.config import BrokerAddress
from canvoy.bridge.state import MAX_BOOTS, BridgeState
from canvoy.bridge.verify import ReplayWindow
from canvoy.errors import ConfigError
from canvoy.wire.errors import DuplicateError


def test_the_restored_window_holds_the_latest_boots(tmp_path: Path) -> None:
    state = BridgeState(tmp_path / "s.sqlite", 1000)
    # Boot ids in falling order: the newest boot has the smallest id.
    boots = [bytes([255 - i]) * 16 for i in range(MAX_BOOTS + 4)]
    for boot in boots:
        state.commit(admitted=[("car-1", boot, seq) for seq in (1, 2, 3)])
    state.prune()
    window = ReplayWindow(1000)
    for device, boot, seq in state.seen():
        window.admit(device, boot, seq)
    with pytest.raises(DuplicateError):
        window.admit("car-1", boots[-1], 2)  # the current boot survived the restart
    assert {b for _d, b, _s in state.seen()} == set(boots[-MAX_BOOTS:])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host": ""}, "broker.host"),
        ({"port": 99999}, "broker.port"),
        ({"keepalive_s": 0}, "broker.keepalive_s"),
    ],
)
def test_broker_address_is_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        BrokerAddress(**options)  # type: ignore[arg-type]
