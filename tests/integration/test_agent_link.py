"""The agent on a bad link: a broker killed again and again, and a link gone for 90 s."""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

import pytest

from canvoy.agent.outbox import open_status
from tests.agentkit import Recorder, agent_config, drive_log, start_agent, stop
from tests.conftest import RunningBroker
from tests.linkproxy import LinkProxy
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _more(recorder: Recorder, seen: int) -> bool:
    return len(recorder.seqs) > seen


def _no_traceback(log: Path) -> None:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 500 :][:3000]


def test_reconnect_storm_20_broker_sigkills_lose_nothing(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """Full-speed replay while Mosquitto is SIGKILLed and restarted 20 times.

    The agent reaches the broker through a relay that is opened only once the operator's
    recorder has subscribed again after each restart, so that whatever the broker accepted
    also reached the recorder: a gap would then be the agent's.
    """
    drive = drive_log(tmp_path / "drive.blf", 900)
    proxy = LinkProxy(broker.port)
    config = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive,
        port=proxy.port,
        # Small batches and a lower publish rate: the backlog lasts through the whole storm.
        mqtt="reconnect_min_s: 0.2, reconnect_max_s: 2.0, max_publishes_per_s: 50",
        extra="batch: {max_samples: 40}\n",
    )
    recorder = Recorder(broker)
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    rng = random.Random(13)
    try:
        wait_for(lambda: len(recorder.seqs) >= 5, timeout_s=60, what="first batches")
        for round_ in range(20):
            seen = len(recorder.seqs)
            wait_for(partial(_more, recorder, seen), timeout_s=60, what=f"round {round_}")
            time.sleep(rng.uniform(0.05, 0.8))  # a random moment, not a synchronisation
            subscribed = recorder.subscriptions
            proxy.cut()
            broker.broker.kill()
            assert agent.poll() is None, f"the agent died in round {round_}"
            with broker.log_path.open("ab") as out:
                broker.broker.start(log=out)
            wait_for(
                lambda: recorder.subscriptions > subscribed,  # noqa: B023 - used at once
                timeout_s=30,
                what="the recorder to subscribe again",
            )
            proxy.restore()
        outbox = tmp_path / "car-1-outbox.sqlite"
        wait_for(lambda: open_status(outbox).depth == 0, timeout_s=120, what="an empty outbox")
        assert agent.poll() is None
        assert stop(agent) == 0
        last = open_status(outbox).counters["next_seq"] - 1
        assert last > 100, "too few envelopes to prove anything"
        wait_for(lambda: recorder.seqs[-1:] == [last], timeout_s=30, what=f"seq {last}")
        assert recorder.check_contiguous()["last"] == last
        _no_traceback(log)
    finally:
        recorder.close()
        proxy.close()
        if agent.poll() is None:
            agent.kill()


def test_after_90_s_without_a_link_the_agent_publishes_within_2_s(
    broker: RunningBroker, tmp_path: Path
) -> None:
    """The link dies silently for 90 s (the back-off reaches its 60 s cap); once it is back,
    the next envelope arrives within 2 s."""
    drive = drive_log(tmp_path / "drive.blf", 400)
    proxy = LinkProxy(broker.port)
    config = agent_config(
        tmp_path / "agent.yaml",
        broker,
        replay=drive,
        port=proxy.port,
        speed="realtime",
        mqtt="reconnect_min_s: 1.0, reconnect_max_s: 60.0",
    )
    recorder = Recorder(broker)
    log = tmp_path / "agent.log"
    agent = start_agent(config, log)
    try:
        wait_for(lambda: len(recorder.seqs) >= 3, timeout_s=30, what="first batches")
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: "the link is down" in log.read_text(), timeout_s=15, what="noticed")
        noticed_s = time.monotonic() - cut_at
        wait_for(lambda: time.monotonic() - cut_at >= 90, timeout_s=100, what="90 s outage")
        before = recorder.seqs[-1]
        proxy.restore()
        back_at = time.monotonic()
        wait_for(lambda: recorder.seqs[-1] > before, timeout_s=2.0, what="publishing again")
        print(
            f"noticed after {noticed_s:.1f} s; published {time.monotonic() - back_at:.2f} s "
            "after the link came back"
        )
        assert stop(agent) == 0
        _no_traceback(log)
    finally:
        recorder.close()
        proxy.close()
        if agent.poll() is None:
            agent.kill()
