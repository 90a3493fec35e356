"""delivery: bridge in the outbox: kept after the PUBACK, republished byte for byte, confirmed."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent import outbox as outbox_module
from canvoy.agent.config import load_config
from canvoy.agent.outbox import Outbox, OutboxConfig, open_status
from canvoy.agent.unconfirmed import DeliveryConfig
from canvoy.errors import ConfigError
from canvoy.wire.envelope import Envelope, sign

KEY = ec.generate_private_key(ec.SECP256R1())
MiB = 1024 * 1024


class Clock:
    """The outbox's wall clock in ms, moved by the test."""

    def __init__(self) -> None:
        self.ms = 1_767_225_600_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(outbox_module, "_now_ms", c)
    return c


def _open(path: Path, boot: bytes | None = None, max_bytes: int = 64 * MiB) -> Outbox:
    return Outbox(
        OutboxConfig(path=path, max_bytes=max_bytes),
        device="car-1",
        boot=boot or os.urandom(16),
        key=KEY,
        delivery=DeliveryConfig(confirm_timeout_s=10, republish_max_s=35),
    )


def test_acknowledged_rows_stay_until_confirmed_and_come_back_byte_for_byte(
    tmp_path: Path, clock: Clock
) -> None:
    box = _open(tmp_path / "o.sqlite")
    for i in range(4):
        box.seal("telemetry", "none", b"t%d" % i)
    first = {r.seq: r.payload for r in box.pending(10)}
    box.acknowledge([1, 2, 3])
    assert [r.seq for r in box.pending(10)] == [4]  # the others wait for a bridge
    assert (box.depth(), box.unsent()) == (4, 1)
    clock.ms += 10_000
    again = box.pending(10)
    assert [r.seq for r in again] == [4, 1, 2, 3]  # the new one first, then the republishes
    assert all(r.payload == first[r.seq] for r in again)
    assert box.confirm([(box.boot, 1, 2)], clock.ms) == 2
    status = box.status()
    assert (status.depth, status.counters["confirmed"], status.counters["acked"]) == (2, 2, 3)
    assert (status.unconfirmed.count, status.unconfirmed.oldest_sent_ms) == (1, clock.ms - 10_000)


def test_each_republish_waits_twice_as_long_up_to_the_limit(tmp_path: Path, clock: Clock) -> None:
    box = _open(tmp_path / "o.sqlite")
    box.seal("telemetry", "none", b"t")
    waits = []
    for _ in range(4):
        box.acknowledge([1])
        start = clock.ms
        while not box.pending(1):
            clock.ms += 1000
        waits.append((clock.ms - start) // 1000)
    assert waits == [10, 20, 35, 35]


def test_a_wall_clock_set_back_does_not_hold_republishing_back(
    tmp_path: Path, clock: Clock
) -> None:
    box = _open(tmp_path / "o.sqlite")  # confirm_timeout_s 10, republish_max_s 35
    box.seal("telemetry", "none", b"t")
    box.acknowledge([1])
    clock.ms -= 86_400_000  # a clock a day ahead at boot, set right afterwards
    assert [r.seq for r in box.pending(1)] == [1]  # not a day from now
    box.acknowledge([1])  # stamped by the right clock: waits its 20 s again
    assert box.pending(1) == []
    clock.ms += 20_000
    assert [r.seq for r in box.pending(1)] == [1]


def test_a_confirmation_of_another_boot_deletes_nothing(tmp_path: Path, clock: Clock) -> None:
    box = _open(tmp_path / "o.sqlite")
    box.seal("events", "none", b"e")
    box.acknowledge([1])
    assert box.confirm([(os.urandom(16), 0, 2**63 - 1)], clock.ms) == 0
    assert box.confirm([(box.boot, 2, 9)], clock.ms) == 0
    assert box.depth() == 1
    assert box.confirm([(box.boot, 0, 2**63 - 1)], clock.ms) == 1
    (event,) = box.status().events_log
    assert event.delivered_ms == clock.ms  # the service-desk view sees it delivered


def test_a_confirmation_before_the_puback_is_fine(tmp_path: Path, clock: Clock) -> None:
    box = _open(tmp_path / "o.sqlite")
    box.seal("telemetry", "none", b"t")
    assert [r.seq for r in box.pending(5)] == [1]  # published
    assert box.confirm([(box.boot, 1, 1)], clock.ms) == 1
    box.acknowledge([1])  # the PUBACK overtaken by the confirmation: nothing to do
    assert (box.depth(), box.pending(5)) == (0, [])


def test_a_confirmation_deletes_only_what_was_ever_published(tmp_path: Path, clock: Clock) -> None:
    # What bounds a bridge key used against a vehicle: the backlog of a vehicle that was offline
    # never reached any bridge, and a range over the whole boot leaves it in place.
    box = _open(tmp_path / "o.sqlite")
    for i in range(5):
        box.seal("events" if i == 4 else "telemetry", "none", b"x%d" % i)
    box.pending(2)  # 5 (the event) and 1 handed to the publisher
    box.acknowledge([5])
    assert box.confirm([(box.boot, 0, 2**63 - 1)], clock.ms) == 2
    assert box.depth() == 3
    assert [r.seq for r in box.pending(5)] == [2, 3, 4]  # all still sent
    assert [e.delivered_ms for e in box.status().events_log] == [clock.ms]
    boot = box.boot
    box.close()
    box = _open(tmp_path / "o.sqlite")  # a restart: nothing handed over by this process yet
    assert box.confirm([(boot, 0, 2**63 - 1)], clock.ms) == 0
    assert box.depth() == 3


def test_rows_of_an_earlier_run_are_confirmed_under_their_own_boot(
    tmp_path: Path, clock: Clock
) -> None:
    old_boot = os.urandom(16)
    box = _open(tmp_path / "o.sqlite", boot=old_boot)
    box.seal("telemetry", "none", b"t")
    box.acknowledge([1])
    box.close()
    box = _open(tmp_path / "o.sqlite")
    box.seal("telemetry", "none", b"u")
    box.pending(5)
    assert box.confirm([(box.boot, 1, 2)], clock.ms) == 1  # only its own: seq 2
    assert box.confirm([(old_boot, 1, 2)], clock.ms) == 1
    assert box.depth() == 0


def test_eviction_takes_what_the_broker_has_before_what_it_never_got(
    tmp_path: Path, clock: Clock
) -> None:
    box = _open(tmp_path / "o.sqlite", max_bytes=MiB)
    for _ in range(6):
        box.seal("telemetry", "none", os.urandom(100_000))
    box.acknowledge([4, 5])
    for _ in range(6):
        box.seal("telemetry", "none", os.urandom(100_000))
    db = sqlite3.connect(tmp_path / "o.sqlite")
    kept = {seq for (seq,) in db.execute("SELECT seq FROM outbox")}
    db.close()
    gone = set(range(1, 13)) - kept
    assert gone == {4, 5}  # not 1 and 2, the oldest: 4 and 5 most likely reached a bridge


def test_an_outbox_made_before_delivery_columns_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    boot = os.urandom(16)
    envelope = Envelope(
        device="car-1",
        boot=boot,
        seq=1,
        kind="telemetry",
        created_ms=1,
        encoding="none",
        body=b"x",
    )
    payload = sign(envelope, KEY)
    _open(path).close()
    db = sqlite3.connect(path)  # back to the outbox as it was before the delivery columns
    db.executescript(
        "DROP INDEX outbox_unsent; DROP INDEX outbox_due; ALTER TABLE outbox DROP COLUMN boot;"
        "ALTER TABLE outbox DROP COLUMN sent_ms; ALTER TABLE outbox DROP COLUMN due_ms;"
        "ALTER TABLE outbox DROP COLUMN attempts;"
    )
    db.execute("INSERT INTO outbox VALUES (1, 1, 'telemetry', 1, ?, ?)", (len(payload), payload))
    db.commit()
    db.close()
    assert open_status(path).unconfirmed.count == 0  # read-only status of an old file works
    box = _open(path)
    box.acknowledge([1])
    assert box.status().unconfirmed.count == 1
    assert box.confirm([(boot, 1, 1)], 5) == 1


def test_delivery_config_short_and_long_forms(tmp_path: Path) -> None:
    base = (
        "device: car-1\ntls: {ca: ca.pem, cert: c.pem, key: k.pem}\n"
        "buses: [{name: pt, interface: virtual, channel: x, databases: [a.dbc]}]\n"
    )
    path = tmp_path / "agent.yaml"
    path.write_text(base + "delivery: broker\n")
    assert load_config(path).delivery.mode == "broker"
    path.write_text(base + "delivery: {confirm_timeout_s: 5}\n")
    delivery = load_config(path).delivery
    assert (delivery.mode, delivery.confirm_timeout_s) == ("bridge", 5)
    path.write_text(base + "delivery: kafka\n")
    with pytest.raises(ConfigError, match=r"delivery\.mode: 'kafka' is not one of"):
        load_config(path)
    path.write_text(base + "delivery: {confirm_timeout_s: 60, republish_max_s: 10}\n")
    with pytest.raises(ConfigError, match=r"delivery\.republish_max_s"):
        load_config(path)
