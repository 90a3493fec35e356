"""The sealing thread: bounded queues from the bus threads, drops counted, a slow disk."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy import dbc as shipped
from canvoy.agent.batch import BatchConfig, Batcher
from canvoy.agent.buses import BusConfig
from canvoy.agent.collect import Sample
from canvoy.agent.episodes import Change
from canvoy.agent.ingest import Ingest
from canvoy.agent.outbox import Outbox, OutboxConfig
from canvoy.agent.policy import load_policy
from canvoy.agent.sealer import Sealer
from canvoy.config import build
from canvoy.errors import ConfigError
from canvoy.simulator.emit import Drive, run_live
from canvoy.simulator.scenarios import load_scenario
from canvoy.wire import body
from canvoy.wire.envelope import Encoding, unpack
from canvoy.wire.events import AgentEvent, DtcEvent, EpisodeState
from canvoy.wire.topics import Kind
from tests.waiting import wait_for

KEY = ec.generate_private_key(ec.SECP256R1())


class Sealed:
    """A seal function that records what it got and on which thread, optionally slowly."""

    def __init__(self, delay_s: float = 0.0, fail_every: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.batches: list[tuple[Kind, dict[str, Any], int | None]] = []
        self.threads: set[str] = set()
        self.calls = 0

    def __call__(
        self,
        kind: Kind,
        encoding: Encoding,
        data: bytes,
        seq: int | None = None,
        episodes: Sequence[Change] = (),
    ) -> int:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError("injected sealing failure")
        time.sleep(self.delay_s)  # the fault: a slow fsync
        self.batches.append((kind, body.decode(encoding, data), seq))
        return seq or self.calls

    def samples(self) -> int:
        return sum(
            len(column[1])
            for kind, content, _seq in self.batches
            if kind == "telemetry"
            for column in content["series"]
        )


def _dtc(t_ms: int, state: EpisodeState, **more: Any) -> DtcEvent:
    return DtcEvent(t_ms=t_ms, code="P0217", state=state, source="dbc", signal="x", **more)


def _sealer(seal: Sealed, **options: Any) -> tuple[Sealer, Batcher]:
    batcher = Batcher(BatchConfig(max_interval_s=0.05), seal, "p" * 64)
    counter = iter(range(1000, 10**9))
    sealer = Sealer(batcher, lambda: next(counter), max_samples=1000, max_events=10, **options)
    return sealer, batcher


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    seal = Sealed()
    sealer, _ = _sealer(seal)  # not started: nothing drains the queue
    for i in range(1500):
        sealer.offer(Sample(float(i), "pt/M/S", i))
    assert not sealer.has_room()
    for _ in range(12):
        sealer.add_events([AgentEvent(t_ms=1, what="test")])
    stats = sealer.stats
    assert (stats.queued_samples, stats.dropped_samples) == (1000, 500)
    assert (stats.queued_events, stats.dropped_events) == (10, 2)
    sealer.start()
    sealer.stop()
    assert seal.samples() == 1000 and sealer.stats.queued_samples == 0
    assert seal.threads == {"sealer"}


def test_events_get_their_sequence_number_at_once_and_keep_it() -> None:
    seal = Sealed()
    sealer, _ = _sealer(seal)
    sealer.start()
    try:
        first = sealer.add_events([_dtc(1, "set")])
        second = sealer.add_events([_dtc(2, "clear", opened_seq=first)])
        assert sealer.flush()
    finally:
        sealer.stop()
    events = [(content["events"][0], seq) for kind, content, seq in seal.batches]
    assert [seq for _e, seq in events] == [first, second]
    assert events[1][0]["opened_seq"] == first


def test_a_failing_seal_is_counted_and_sealing_goes_on() -> None:
    seal = Sealed(fail_every=2)
    sealer, _ = _sealer(seal)
    sealer.start()
    try:
        for round_ in range(6):
            sealer.offer(Sample(float(round_), "pt/M/S", round_))
            assert sealer.flush()
    finally:
        sealer.stop()
    assert sealer.stats.errors == 3
    assert len(seal.batches) == 3


def test_queue_bounds_are_checked_at_load() -> None:
    with pytest.raises(ConfigError, match=r"^batch.queue_samples: must be >= 1000"):
        build(BatchConfig, {"queue_samples": 5}, "batch")


def test_reserved_numbers_and_a_dropped_batch_in_the_outbox(tmp_path: Path) -> None:
    box = Outbox(
        OutboxConfig(path=tmp_path / "o.sqlite"), device="car-1", boot=os.urandom(16), key=KEY
    )
    try:
        reserved = box.reserve()
        assert box.seal("telemetry", "none", b"t") == reserved + 1
        assert box.seal("events", "none", b"e", reserved) == reserved
        # A batch too big to sign is dropped and gives its number back.
        assert box.seal("telemetry", "none", os.urandom(200_000)) is None
        assert box.seal("telemetry", "none", b"u") == reserved + 2
        rows = box.pending(10)
        assert [unpack(r.payload).envelope.seq for r in rows] == [reserved, 2, 3]
    finally:
        box.close()


def test_a_50_ms_fsync_never_reaches_the_bus_thread(tmp_path: Path) -> None:
    """Demo traffic on a live (virtual) bus while every commit takes 50 ms longer."""
    box = Outbox(
        OutboxConfig(path=tmp_path / "o.sqlite", sync="full"),
        device="car-1",
        boot=os.urandom(16),
        key=KEY,
    )
    slow = Sealed(delay_s=0.05)

    def seal(
        kind: Kind,
        encoding: Encoding,
        data: bytes,
        seq: int | None = None,
        episodes: Sequence[Change] = (),
    ) -> int | None:
        slow(kind, encoding, data, seq)
        return box.seal(kind, encoding, data, seq, episodes)

    batcher = Batcher(BatchConfig(max_interval_s=0.1), seal, "p" * 64)
    sealer = Sealer(batcher, box.reserve, max_samples=100_000, max_events=1000)
    emitted: list[Sample] = []
    frame_s: list[float] = []

    def offer(sample: Sample) -> None:
        emitted.append(sample)
        sealer.offer(sample)

    channel = f"canvoy-slow-{os.getpid()}"
    bus = BusConfig(
        name="pt", databases=(shipped.path(shipped.DEMO_DBC),), interface="virtual", channel=channel
    )
    ingest = Ingest([bus], load_policy(shipped.path("demo_policy.yaml")), offer)
    collector = ingest.channels[0].collector
    handle = collector.on_message_received

    def timed(msg: can.Message) -> None:
        started = time.perf_counter()
        handle(msg)
        frame_s.append(time.perf_counter() - started)

    collector.on_message_received = timed  # type: ignore[method-assign]
    sealer.start()
    ingest.start()
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        supervisor = ingest.channels[0].supervisor
        assert supervisor is not None
        wait_for(lambda: supervisor.bus is not None, what="the bus to open")
        drive = Drive(load_scenario("normal"), databases=[shipped.path(shipped.DEMO_DBC)])
        sent = run_live(drive, sender, None, 3.0, stop=threading.Event(), speed=2.0)
        wait_for(lambda: collector.stats.frames == sent, what="every frame read")
    finally:
        ingest.stop()
        sealer.stop()
        sender.shutdown()
        box.close()
    assert slow.threads == {"sealer"}, "a commit ran on a bus thread"
    assert sealer.stats.dropped_samples == sealer.stats.dropped_events == 0
    assert slow.calls >= 5 and slow.samples() == len(emitted) > 0
    frame_s.sort()
    print(
        f"{sent} frames; per-frame median {frame_s[len(frame_s) // 2] * 1e6:.0f} us, max "
        f"{frame_s[-1] * 1e3:.1f} ms, with {slow.calls} commits of 50 ms more each"
    )
