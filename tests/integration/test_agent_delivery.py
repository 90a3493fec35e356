"""The agent against a real Mosquitto: outages, SIGKILLs and refusals lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from canvoy.agent.outbox import open_status
from canvoy.wire import body
from tests.agentkit import REPO, Recorder, agent_config, drive_log, start_agent, stop
from tests.conftest import RunningBroker
from tests.waiting import wait_for


def _status(config: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "canvoy", "agent", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_broker_down_for_30_s_loses_nothing(broker: RunningBroker, tmp_path: Path) -> None:
    log = drive_log(tmp_path / "drive.blf", 120)
    config = agent_config(tmp_path / "agent.yaml", broker, replay=log, speed="x4")
    recorder = Recorder(broker)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: len(recorder.seqs) >= 2, timeout_s=30, what="first batches")
        broker.broker.stop()
        down_since = time.monotonic()
        wait_for(lambda: time.monotonic() - down_since >= 30, timeout_s=40, what="30 s outage")
        waiting = open_status(tmp_path / "car-1-outbox.sqlite").depth
        assert waiting > 0, "nothing queued while the broker was down: the test proves nothing"
        with broker.log_path.open("ab") as out:
            broker.broker.start(log=out)
        assert stop(agent) == 0  # SIGTERM: seal the open batch, wait for the acks
        outbox = open_status(tmp_path / "car-1-outbox.sqlite")
        assert outbox.depth == 0
        last = outbox.counters["next_seq"] - 1
        wait_for(lambda: recorder.seqs[-1:] == [last], timeout_s=30, what="every batch")
        result = recorder.check_contiguous()
        assert result["last"] == last
    finally:
        recorder.close()
        if agent.poll() is None:
            agent.kill()


def test_sigkill_five_times_leaves_a_contiguous_verified_sequence(
    broker: RunningBroker, tmp_path: Path
) -> None:
    log = drive_log(tmp_path / "drive.blf", 60)
    config = agent_config(tmp_path / "agent.yaml", broker, replay=log, speed="x6")
    recorder = Recorder(broker)
    seed = int(os.environ.get("CANVOY_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    try:
        for _ in range(5):
            agent = start_agent(config, tmp_path / "agent.log")
            time.sleep(rng.uniform(1.0, 6.0))  # a random moment, not a synchronisation
            assert stop(agent, signal.SIGKILL) == -signal.SIGKILL
        agent = start_agent(config, tmp_path / "agent.log", "--exit-when-done")
        assert agent.wait(120) == 0
        outbox = open_status(tmp_path / "car-1-outbox.sqlite")
        assert outbox.depth == 0
        last = outbox.counters["next_seq"] - 1
        wait_for(lambda: recorder.seqs[-1:] == [last], timeout_s=30, what=f"seq {last}")
        result = recorder.check_contiguous()
        assert result["last"] == last >= 10, f"seed {seed}"
        boots = {e.envelope.boot for e in recorder.envelopes}
        assert len(boots) >= 2, "every restart should have its own boot id"
        for signed in recorder.envelopes[:50]:
            if signed.envelope.kind == "telemetry":
                batch = body.parse_telemetry(
                    body.decode(signed.envelope.encoding, signed.envelope.body)
                )
                assert batch.samples > 0
    finally:
        recorder.close()


def test_a_refused_publish_goes_to_rejected_and_delivery_goes_on(
    broker: RunningBroker, tmp_path: Path
) -> None:
    log = drive_log(tmp_path / "drive.blf", 240)
    config = agent_config(tmp_path / "agent.yaml", broker, replay=log, speed="x8")
    recorder = Recorder(broker)
    agent = start_agent(config, tmp_path / "agent.log")
    acl = broker.broker.settings.acl_path
    original = acl.read_text()
    try:
        wait_for(lambda: len(recorder.seqs) >= 2, timeout_s=30, what="first batches")
        # Take the device's telemetry right away: Mosquitto answers 0x87 Not authorized.
        acl.write_text(original.replace("topic write canvoy/v1/car-1/telemetry\n", ""))
        os.kill(broker.broker.pid or 0, signal.SIGHUP)
        wait_for(lambda: _status(config)["rejected"] != 0, timeout_s=30, what="a rejection")
        broker.broker.reload()  # the ACL from the PKI again
        seen = len(recorder.seqs)
        wait_for(lambda: len(recorder.seqs) > seen + 2, timeout_s=30, what="delivery again")
        assert stop(agent) == 0
        report = _status(config)
        assert report["depth"] == 0
        rejected = int(str(report["rejected"]))
        assert rejected >= 1
        assert "Not authorized" in (tmp_path / "agent.log").read_text()
        # Everything that was not rejected arrived.
        missing = set(range(1, int(str(report["counters"]["next_seq"])))) - set(recorder.seqs)  # type: ignore[index]
        assert len(missing) == rejected
    finally:
        acl.write_text(original)
        recorder.close()
        if agent.poll() is None:
            agent.kill()
