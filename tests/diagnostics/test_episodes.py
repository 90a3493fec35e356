"""The episode tracker: one id per episode, updates, restarts that continue or close episodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.batch import BatchConfig, Batcher
from canvoy.agent.episodes import RESTORED_NOTE, EpisodeTracker, Fault, Transition
from canvoy.agent.outbox import Outbox, OutboxConfig
from canvoy.wire import body
from canvoy.wire.events import DtcEvent, parse_events


def _build(step: Transition) -> DtcEvent:
    e = step.episode
    return DtcEvent(
        t_ms=1, code=e.code, state=step.state, source="obd", signal=e.scope, episode=e.id
    )


def _outbox(path: Path) -> Outbox:
    key = ec.generate_private_key(ec.SECP256R1())
    return Outbox(OutboxConfig(path=path), device="car-1", boot=os.urandom(16), key=key)


def _events(box: Outbox) -> list[Any]:
    out = []
    for row in box.pending(1000):
        if row.kind == "events":
            from canvoy.wire.envelope import unpack

            e = unpack(row.payload).envelope
            out += parse_events(body.decode(e.encoding, e.body))
    return out


def test_set_update_clear_share_one_id_and_repeats_are_silent() -> None:
    sent: list[DtcEvent] = []
    tracker = EpisodeTracker(lambda events, _changes: sent.extend(events))  # type: ignore[arg-type]
    for active in ({"A": ()}, {"A": ()}, {"A": ("stored",)}, {"A": ("stored",), "B": ()}, {}):
        faults = {k: Fault(k, v) for k, v in active.items()}
        tracker.report("obd", "obd/OBD_7E8", faults, _build, 1)
    assert [(e.code, e.state) for e in sent] == [
        ("A", "set"),
        ("A", "update"),
        ("B", "set"),
        ("A", "clear"),
        ("B", "clear"),
    ]
    a = {e.episode for e in sent if e.code == "A"}
    b = {e.episode for e in sent if e.code == "B"}
    assert len(a) == len(b) == 1 and a != b
    assert tracker.open_count == 0


def test_episodes_are_stored_with_their_envelope_and_continue_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    box = _outbox(path)
    batcher = Batcher(BatchConfig(), box.seal, "p")
    tracker = EpisodeTracker(batcher.add_events)
    tracker.report(
        "obd", "obd/OBD_7E8", {"P0217": Fault("P0217"), "P0128": Fault("P0128")}, _build, 1
    )
    tracker.report("obd", "obd/OBD_7E9", {"U0100": Fault("U0100")}, _build, 1)
    [first, other] = [e for e in _events(box) if e.state == "set" and e.code in ("P0217", "U0100")]
    box.close()  # as after SIGKILL: nothing but the database survives

    box = _outbox(path)
    restored = box.open_episodes()
    assert {e.code for e in restored} == {"P0217", "P0128", "U0100"}
    clock = [0.0]
    tracker = EpisodeTracker(
        Batcher(BatchConfig(), box.seal, "p").add_events,
        restored,
        resume_s=30,
        clock=lambda: clock[0],
    )
    before = len(_events(box))
    # P0217 is still active (same episode, nothing sent), P0128 is gone (cleared).
    tracker.report("obd", "obd/OBD_7E8", {"P0217": Fault("P0217")}, _build, 2)
    new = _events(box)[before:]
    assert [(e.code, e.state) for e in new] == [("P0128", "clear")]
    # The second ECU never answers again: its episode is closed once resume_s has passed.
    assert tracker.tick(3) == 0
    clock[0] = 31.0
    assert tracker.tick(3) == 1
    closed = _events(box)[-1]
    assert (closed.code, closed.state, closed.episode, closed.note) == (
        "U0100",
        "clear",
        other.episode,
        RESTORED_NOTE,
    )
    assert [e.id for e in box.open_episodes()] == [first.episode]
    tracker.report("obd", "obd/OBD_7E8", {}, _build, 4)
    assert _events(box)[-1].episode == first.episode and box.open_episodes() == []


def test_an_episode_whose_envelope_was_dropped_is_not_stored_either(tmp_path: Path) -> None:
    box = _outbox(tmp_path / "outbox.sqlite")
    tracker = EpisodeTracker(Batcher(BatchConfig(), box.seal, "p").add_events)
    # Beyond the 128 KiB an envelope may have, even compressed: the outbox drops it.
    noise = {f"s{i}": [[k, os.urandom(120).hex()] for k in range(30)] for i in range(64)}

    def huge(step: Transition) -> DtcEvent:
        return DtcEvent(
            t_ms=1,
            code="P0217",
            state=step.state,
            source="dbc",
            signal=step.episode.scope,
            episode=step.episode.id,
            freeze_frame=noise,
        )

    tracker.report("dbc", "pt/BIG", {"P0217": Fault("P0217")}, huge, 1)
    assert box.status().counters["dropped"] == 1
    assert box.open_episodes() == []  # not stored: its envelope was not either
    tracker.report("dbc", "pt/DIAG", {"P0217": Fault("P0217")}, _build, 1)  # the outbox goes on
    assert [e.scope for e in box.open_episodes()] == ["pt/DIAG"]
