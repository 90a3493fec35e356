"""The NATS sink against a real three-node JetStream cluster with an R3 stream, one node
SIGKILLed while records flow: nothing acknowledged is lost, nothing is stored twice, and the
bridge confirms to the agent nothing the stream has not stored."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from canvoy.agent.outbox import open_status
from canvoy.bridge.records import Record
from canvoy.bridge.sinks.nats import NatsConfig, NatsSink
from canvoy.errors import SinkError
from tests.agentkit import agent_config, drive_log, start_agent, stop
from tests.bridgekit import bridge_config, bridge_ready, read_jsonl, start_bridge
from tests.conftest import RunningBroker
from tests.jetstream import NatsCluster, read_stream, stream_leader
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _record(i: int) -> Record:
    key = f"car-1:00:{i}"
    return Record(key, "car-1", "telemetry", {"key": key, "envelope": key, "seq": i})


def test_acknowledged_records_survive_the_loss_of_the_leader(nats_cluster: NatsCluster) -> None:
    sink = NatsSink("stream", NatsConfig(url=tuple(nats_cluster.urls), replicas=3, timeout_s=3))
    acknowledged: list[str] = []
    failures: list[str] = []
    done = threading.Event()

    def publish() -> None:  # as the sink's queue does: again, same keys, until taken
        for start in range(0, 400, 10):
            batch = [_record(i) for i in range(start, start + 10)]
            while True:
                try:
                    sink.deliver(batch)
                    break
                except SinkError as exc:
                    failures.append(str(exc))
            acknowledged.extend(r.key for r in batch)
        done.set()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 100, timeout_s=30, what="100 acknowledged")
        leader = stream_leader(nats_cluster.urls, "CANVOY")
        killed = next(n for n in nats_cluster.nodes if n.name == leader)
        taken_before = list(acknowledged)
        nats_cluster.kill(killed)
        assert done.wait(120), f"publishing stalled after {leader} was killed: {failures[-1:]}"
        survivors = [n.url for n in nats_cluster.nodes if n is not killed]
        stored = Counter(m.msg_id for m in read_stream(survivors, "CANVOY"))
    finally:
        sink.close()
    assert not set(taken_before) - set(stored), "a record acknowledged before the kill is gone"
    assert set(stored) == {_record(i).key for i in range(400)}
    assert [k for k, n in stored.items() if n > 1] == []
    sink_again = NatsSink("again", NatsConfig(url=tuple(survivors), replicas=3))
    try:
        sink_again.deliver([_record(i) for i in range(50)])  # redelivered: stored once
        assert sink_again.duplicates == 50
    finally:
        sink_again.close()


def _confirmed(outbox: Path) -> set[int]:
    """Sequence numbers the agent sealed and a bridge confirmed (they left the outbox)."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=10)
    try:
        left = {seq for (seq,) in db.execute("SELECT seq FROM outbox")}
        (next_seq,) = db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()
    finally:
        db.close()
    return set(range(1, next_seq)) - left


def test_bridge_to_r3_stream_survives_a_node_sigkill(
    broker: RunningBroker, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    files = tmp_path / "records.jsonl"
    config = bridge_config(
        tmp_path / "bridge.yaml", broker, jsonl=files, nats=nats_cluster.urls, replicas=3
    )
    bridge = start_bridge(config, tmp_path / "bridge.log")
    log = drive_log(tmp_path / "drive.blf", 60)
    agent_yaml = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=log,
        speed="x4",
        extra="batch: {max_interval_s: 0.2}\n",
        delivery="bridge",
    )
    outbox = tmp_path / "car-1-outbox.sqlite"
    try:
        wait_for(lambda: bridge_ready(config), timeout_s=30, what="bridge connected")
        agent = start_agent(agent_yaml, tmp_path / "agent.log", "--exit-when-done")
        wait_for(lambda: len(read_jsonl(files)) >= 10, timeout_s=60, what="first records")
        leader = stream_leader(nats_cluster.urls, "CANVOY")
        killed = next(n for n in nats_cluster.nodes if n.name == leader)
        nats_cluster.kill(killed)
        survivors = [n.url for n in nats_cluster.nodes if n is not killed]
        checks = 0
        while agent.poll() is None and checks < 3:  # while the cluster recovers
            confirmed = _confirmed(outbox)
            stored_now = {m.record["seq"] for m in read_stream(survivors, "CANVOY")}
            assert confirmed <= stored_now, (
                f"confirmed, not in the stream: {confirmed - stored_now}"
            )
            checks += 1
        assert agent.wait(120) == 0
        assert _confirmed(outbox) == set(range(1, open_status(outbox).counters["next_seq"]))
        seqs = {r["seq"] for r in read_jsonl(files)}
        last = max(seqs)

        def stored() -> Counter[int]:
            return Counter(m.record["seq"] for m in read_stream(survivors, "CANVOY"))

        wait_for(lambda: set(stored()) >= set(range(1, last + 1)), 60, "every seq in the stream")
        counts = stored()
        ids = Counter(m.msg_id for m in read_stream(survivors, "CANVOY"))
    finally:
        stop(bridge)
        if agent.poll() is None:
            agent.kill()
    assert seqs == set(range(1, last + 1)), "the files miss a sequence number"
    assert last >= 20, "too few envelopes for the kill to fall inside the run"
    assert set(counts) == set(range(1, last + 1))
    assert [k for k, n in ids.items() if n > 1] == [], "a record stored twice in the stream"


def test_a_sink_started_before_its_cluster_delivers_once_the_cluster_is_up(
    tmp_path: Path,
) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    sink = NatsSink("stream", NatsConfig(url=tuple(cluster.urls), replicas=3, timeout_s=1))
    try:
        for _ in range(3):  # each waits on the same connection attempt, none piles up
            with pytest.raises(SinkError, match=r"sink stream: NATS nats://127\.0\.0\.1:"):
                sink.deliver([_record(1)])
        cluster.start()
        wait_for(lambda: _delivered(sink, _record(1)), timeout_s=60, what="delivered")
        assert [m.msg_id for m in read_stream(cluster.urls, "CANVOY")] == [_record(1).key]
    finally:
        sink.close()
        cluster.stop()


def _delivered(sink: NatsSink, record: Record) -> bool:
    try:
        sink.deliver([record])
    except SinkError:
        return False
    return True
