"""The fleet view's rules: how a device's newest status becomes online or offline, and since."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canvoy.certs import pki
from canvoy.fleet import REJECTED_KEPT, FleetWatch, Sighting, judge
from canvoy.transport.mqtt import Message
from canvoy.wire import body
from canvoy.wire.errors import MalformedError

NOW = 1_800_000_000_000
CONNECTED = NOW - 600_000


def sighting(
    state: body.State = "online",
    *,
    age_s: float = 0,
    heartbeat_s: int = 60,
    lost: bool = False,
    live: bool = False,
    connected_ms: int | None = CONNECTED,
) -> Sighting:
    status = body.Status(
        state=state,
        agent="1.0",
        policy="p" * 64,
        cert_pem="",
        outbox_depth=3,
        connected_ms=connected_ms,
        heartbeat_s=heartbeat_s,
        overdue=2,
        lost=lost,
    )
    created = int(NOW - age_s * 1000)
    return Sighting(
        device="car-1",
        status=status,
        created_ms=created,
        received_ms=NOW - 1000,
        live=live,
    )


BIRTH = 600  # seconds ago: the status made when the connection began


@pytest.mark.parametrize(
    ("seen", "now", "expected"),
    [
        (sighting(age_s=10), NOW, (True, "heartbeat", CONNECTED, NOW - 10_000)),
        (sighting(age_s=179), NOW, (True, "heartbeat", CONNECTED, NOW - 179_000)),
        (sighting(age_s=181), NOW, (False, "silent", NOW - 181_000, NOW - 181_000)),
        (sighting(age_s=BIRTH), CONNECTED + 5000, (True, "connected", CONNECTED, CONNECTED)),
        (sighting(age_s=BIRTH), NOW, (False, "silent", CONNECTED, CONNECTED)),
        (
            sighting(age_s=5000, heartbeat_s=0, connected_ms=None),
            NOW,
            (True, "connected", NOW - 5_000_000, NOW - 5_000_000),
        ),
        (sighting("offline", age_s=30), NOW, (False, "goodbye", NOW - 30_000, NOW - 30_000)),
        (sighting("offline", age_s=BIRTH, lost=True), NOW, (False, "lost", None, None)),
        (
            sighting("offline", age_s=BIRTH, lost=True, live=True),
            NOW,
            (False, "lost", NOW - 1000, None),
        ),
    ],
)
def test_judge(seen: Sighting, now: int, expected: tuple[object, ...]) -> None:
    state = judge(seen, now)
    assert (state.online, state.cause, state.since_ms, state.last_seen_ms) == expected
    assert (state.outbox, state.overdue, state.agent) == (3, 2, "1.0")


def test_stale_after_overrides_the_heartbeat_rule() -> None:
    assert judge(sighting(age_s=20), NOW, stale_after_s=10).cause == "silent"
    assert judge(sighting(age_s=5000, heartbeat_s=0), NOW, stale_after_s=3600).cause == "silent"


@given(
    connected_ms=st.none() | st.integers(0, 2**63 - 1),
    heartbeat_s=st.integers(0, 86400),
    overdue=st.integers(0, 2**63 - 1),
    lost=st.booleans(),
)
def test_status_round_trip(
    connected_ms: int | None, heartbeat_s: int, overdue: int, lost: bool
) -> None:
    status = body.Status(
        state="offline",
        agent="a",
        policy="p",
        cert_pem="c",
        connected_ms=connected_ms,
        heartbeat_s=heartbeat_s,
        overdue=overdue,
        lost=lost,
    )
    assert body.parse_status(body.decode(*body.encode(body.status_content(status)))) == status


def test_a_status_of_an_older_agent_reads_with_defaults() -> None:
    old = {"state": "online", "agent": "0.1", "policy": "p", "cert": "c", "outbox": 1}
    status = body.parse_status(old)
    assert (status.connected_ms, status.heartbeat_s, status.overdue, status.lost) == (
        None,
        0,
        0,
        False,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("overdue", -1), ("heartbeat_s", -5), ("connected_ms", -1), ("lost", 1), ("overdue", "2")],
)
def test_bad_optional_fields_are_malformed(field: str, value: object) -> None:
    content = {"state": "online", "agent": "a", "policy": "p", "cert": "c", "outbox": 0}
    with pytest.raises(MalformedError):
        body.parse_status({**content, field: value})


def test_a_device_sending_junk_cannot_grow_the_view(pki_dir: Path) -> None:
    """`fleet status --watch --json` printed every rejection ever seen, in every document."""
    fleet = FleetWatch(client_id="ops", tls=pki.tls_files(pki_dir, "operator", "ops"), crl=None)
    for n in range(REJECTED_KEPT * 10):
        junk = Message(topic=b"canvoy/v1/car-1/status")
        junk.payload = f"junk {n}".encode()
        fleet._received(junk)  # as paho delivers it
    assert fleet.poll(1.0)
    assert fleet.rejected_total == REJECTED_KEPT * 10
    assert len(fleet.rejected) == REJECTED_KEPT
    assert "canvoy/v1/car-1/status: malformed" in fleet.rejected[-1]
    assert fleet.states() == []
