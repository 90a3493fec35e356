"""A short chaos run (``make chaos`` is the long one): 5 agent SIGKILLs, 2 broker SIGKILLs and
1 bridge SIGKILL at random moments; every sealed envelope reaches the stream once and the files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.chaos import Chaos, Plan

pytestmark = pytest.mark.integration


def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("CANVOY_TEST_SEED", time.time_ns() % 1_000_000))
    plan = Plan(
        seed=seed,
        agent_kills=5,
        broker_kills=2,
        bridge_kills=1,
        nats_kills=0,
        blackouts=0,
        agent_life_s=(1.0, 4.0),
        drive_s=120,
        speed="x10",
        settle_s=60.0,
    )
    lines: list[str] = []
    verdict = Chaos(plan, tmp_path / "run", lines.append).run()
    report = "\n".join([f"seed {seed}", *lines, *verdict.lines()])
    assert verdict.kills == {"agent": 5, "broker": 2, "bridge": 1}, report
    assert len(verdict.sealed) >= 20, report
    assert verdict.lines()[-1] == "lost 0", report
    assert verdict.stream_duplicates == 0, report
