"""Tickets: one id per episode whichever bridge sees the event; receipts mark events delivered."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.outbox import Outbox, OutboxConfig
from canvoy.bridge.tickets import ServiceRule, Ticketing
from canvoy.bridge.verify import Verifier
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire import body
from canvoy.wire.keys import DeviceKeys


def test_set_and_clear_of_one_episode_share_one_ticket_on_any_instance(pki_dir: Path) -> None:
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    rules = (ServiceRule(match="P02*", severity="high", title="Overheating"),)
    opened = car.events(
        [{"type": "dtc", "t_ms": 1, "code": "P0217", "state": "set", "odometer_km": 10.5}]
    )
    open_seq = car.seq
    car.seq += 5
    closed = car.events(
        [{"type": "dtc", "t_ms": 9, "code": "P0217", "state": "clear", "opened_seq": open_seq}]
    )
    other = car.events([{"type": "dtc", "t_ms": 9, "code": "B1000", "state": "set"}])
    ids = []
    for _instance in range(2):  # two bridges, fresh state each
        verifier = Verifier(DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes()))
        verifier.check(car.topic("status"), car.birth())
        ticketing = Ticketing(rules)
        for payload in (opened, closed, other):
            for record in ticketing.tickets(verifier.check(car.topic("events"), payload)):
                ids.append((record.data["ticket_id"], record.data["status"], record.key))
    assert ids[:2] == ids[2:]  # the same on both instances
    assert [i[:2] for i in ids[:2]] == [
        (f"car-1:P0217:{open_seq}", "open"),
        (f"car-1:P0217:{open_seq}", "closed"),
    ]


def test_receipts_mark_events_delivered(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    boot = os.urandom(16)
    box = Outbox(OutboxConfig(path=tmp_path / "o.sqlite"), device="car-1", boot=boot, key=key)
    encoding, data = body.encode(
        body.events_content([{"type": "dtc", "t_ms": 1, "code": "P0217", "state": "set"}])
    )
    seq = box.seal("events", encoding, data)
    box.seal("telemetry", "none", b"t")
    assert [e.summary for e in box.status().events_log] == ["P0217 set"]
    box.acknowledge([1, 2])
    assert box.record_receipt([f"car-1:{boot.hex()}:{seq}", "car-9:00:1"], 1234) == 1
    [event] = box.status().events_log
    assert (event.delivered_ms, event.acked_ms is not None) == (1234, True)
