"""Topic names and identity names."""

from __future__ import annotations

import pytest

from canvoy.wire.errors import IdentityMismatchError, InvalidIdentityError
from canvoy.wire.ids import check_id
from canvoy.wire.topics import fleet_topic, parse_topic, topic


@pytest.mark.parametrize("name", ["car-1", "1HGCM82633A004352", "a", "x" * 64, "A_b-9"])
def test_valid_ids(name: str) -> None:
    assert check_id(name) == name


@pytest.mark.parametrize("name", ["", "car 7", "x" * 65, "car/1", "car+", "#", "é"])
def test_invalid_ids_name_the_value_and_the_rule(name: str) -> None:
    with pytest.raises(InvalidIdentityError, match=r"is invalid: use 1-64 of \[A-Za-z0-9_-\]"):
        check_id(name)


def test_topics_round_trip_and_stay_within_seven_slashes() -> None:
    for kind in ("telemetry", "events", "status", "receipts"):
        name = topic("car-1", kind)
        assert parse_topic(name) == ("car-1", kind)
        assert name.count("/") <= 7
    assert fleet_topic("car-1", "events") == "fleet/v1/car-1/events"


@pytest.mark.parametrize(
    "name",
    [
        "canvoy/v1/car-1",
        "canvoy/v2/car-1/telemetry",
        "canvoy/v1/car 1/telemetry",
        "canvoy/v1/car-1/other",
        "canvoy/v1/car-1/telemetry/x",
        "x/v1/car-1/telemetry",
    ],
)
def test_foreign_topics_are_rejected(name: str) -> None:
    with pytest.raises(IdentityMismatchError):
        parse_topic(name)
