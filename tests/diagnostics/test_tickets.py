"""Tickets: one id per episode whichever bridge sees the event; receipts mark events delivered."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.outbox import Outbox, OutboxConfig
from canvoy.bridge.tickets import ServiceRule, Ticketing
from canvoy.bridge.verify import Verifier
from canvoy.certs import pki
from canvoy.simulator.fleet import VirtualDevice
from canvoy.wire import body
from canvoy.wire.events import DtcEvent, events_content
from canvoy.wire.keys import DeviceKeys


def _event(state: str, **more: Any) -> DtcEvent:
    fields: dict[str, Any] = {"code": "P0217", "source": "dbc", "signal": "pt/DIAG_DTC"}
    return DtcEvent(t_ms=1, state=state, **{**fields, **more})  # type: ignore[arg-type]


def test_every_event_of_one_episode_names_one_ticket_on_any_instance(pki_dir: Path) -> None:
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    rules = (
        ServiceRule(match="P02*", severity="high", title="Overheating"),
        ServiceRule(match="SPN110", severity="high"),
    )
    episode = "0123456789abcdef"
    payloads = [
        car.events([_event("set", episode=episode, odometer_km=10.5)]),
        car.events([_event("update", episode=episode, freeze_frame={"x": [[1, 2.5]]})]),
        car.events([_event("clear", episode=episode)]),
        car.events([_event("set", code="B1000", episode="fedcba9876543210")]),  # no rule
        # J1939: the FMI changes within the episode; a rule on the SPN follows it.
        car.events([_event("set", code="SPN110-FMI0", spn=110, fmi=0, episode="1" * 16)]),
        car.events([_event("clear", code="SPN110-FMI3", spn=110, fmi=3, episode="1" * 16)]),
    ]
    seen = []
    for _instance in range(2):  # two bridges, fresh state each
        verifier = Verifier(DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes()))
        verifier.check(car.topic("status"), car.birth())
        ticketing = Ticketing(rules)
        seen.append(
            [
                (r.data["ticket_id"], r.data["status"], r.key)
                for payload in payloads
                for r in ticketing.tickets(verifier.check(car.topic("events"), payload))
            ]
        )
    assert seen[0] == seen[1]  # the same on both instances
    assert [t[:2] for t in seen[0]] == [
        (f"car-1:{episode}", "open"),
        (f"car-1:{episode}", "updated"),
        (f"car-1:{episode}", "closed"),
        ("car-1:" + "1" * 16, "open"),
        ("car-1:" + "1" * 16, "closed"),
    ]
    assert len({t[2] for t in seen[0]}) == 5  # one idempotency key per ticket change


def test_events_of_older_agents_keep_their_ticket_ids(pki_dir: Path) -> None:
    car = VirtualDevice.from_pki(pki_dir, "car-1")
    verifier = Verifier(DeviceKeys(pki.ca_cert_path(pki_dir).read_bytes()))
    verifier.check(car.topic("status"), car.birth())
    opened = car.events([_event("set")])
    open_seq = car.seq
    closed = car.events([_event("clear", opened_seq=open_seq)])
    ticketing = Ticketing((ServiceRule(match="P0217"),))
    ids = [
        r.data["ticket_id"]
        for p in (opened, closed)
        for r in ticketing.tickets(verifier.check(car.topic("events"), p))
    ]
    assert ids == [f"car-1:P0217:{open_seq}"] * 2


def test_receipts_mark_events_delivered(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    boot = os.urandom(16)
    box = Outbox(OutboxConfig(path=tmp_path / "o.sqlite"), device="car-1", boot=boot, key=key)
    encoding, data = body.encode(events_content([_event("set")]))
    seq = box.seal("events", encoding, data)
    box.seal("telemetry", "none", b"t")
    assert [e.summary for e in box.status().events_log] == ["P0217 set"]
    box.acknowledge([1, 2])
    assert box.record_receipt([f"car-1:{boot.hex()}:{seq}", "car-9:00:1"], 1234) == 1
    [event] = box.status().events_log
    assert (event.delivered_ms, event.acked_ms is not None) == (1234, True)
