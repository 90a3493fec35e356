"""The chaos run: SIGKILL the agent, the broker, a bridge and a NATS node at random moments,
then check that every envelope the agent sealed reached the stream once and the files.

``make chaos`` runs ``python -m tests.chaos`` with its defaults; tests/integration/test_chaos.py
runs a short version. Seeded: the same seed gives the same plan of kills (the moments the
processes reach differ from run to run). What the agent sealed is read from its own outbox,
where a trigger notes every committed envelope in the committing transaction.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from canvoy.agent.outbox import open_status
from tests.chaosfleet import BRIDGES, STREAM, Fleet, StartError
from tests.jetstream import StoredMessage, read_stream

Say = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much chaos, and how long the pieces live."""

    seed: int
    agent_kills: int = 200
    broker_kills: int = 8
    bridge_kills: int = 4
    nats_kills: int = 2
    blackouts: int = 2  # broker SIGKILLs while both bridges are down (the broker holds all)
    agent_life_s: tuple[float, float] = (0.3, 3.5)
    drive_s: int = 900
    speed: str = "x30"
    settle_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("broker_kills", "bridge_kills", "nats_kills", "blackouts"):
            if not 0 <= getattr(self, name) <= self.agent_kills - self.blackouts:
                raise ValueError(
                    f"{name} must be 0..agent_kills - blackouts "
                    f"({self.agent_kills - self.blackouts})"
                )


@dataclass
class Verdict:
    """What the run found."""

    seed: int
    kills: Counter[str] = field(default_factory=Counter)
    sealed: dict[str, int] = field(default_factory=dict)  # envelope key -> created_ms
    kinds: Counter[str] = field(default_factory=Counter)
    stream_records: int = 0
    file_records: int = 0
    stream_duplicates: int = 0
    file_duplicates: int = 0
    longest_delay_s: float = 0.0
    longest_delay_key: str = ""
    missing_stream: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    evicted: int = 0
    dropped: int = 0
    duration_s: float = 0.0
    folder: Path = Path()

    @property
    def lost(self) -> list[str]:
        """Every sealed envelope missing from the stream or the files."""
        return sorted(set(self.missing_stream) | set(self.missing_files), key=_seq_order)

    @property
    def passed(self) -> bool:
        """Nothing lost and nothing stored twice in the stream."""
        return not self.lost and self.stream_duplicates == 0

    def lines(self) -> list[str]:
        """The report; the last line is ``lost 0`` or the missing keys."""
        kills = ", ".join(
            f"{what} {self.kills[what]}" for what in ("agent", "broker", "bridge", "nats")
        )
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        out = [
            f"kills: {kills}",
            f"envelopes: {len(self.sealed)} sealed ({kinds}); evicted {self.evicted}, "
            f"dropped {self.dropped}",
            f"records: stream {self.stream_records}, files {self.file_records}",
            f"duplicates: stream {self.stream_duplicates} (same Nats-Msg-Id stored twice), "
            f"files {self.file_duplicates} (a record written again, allowed: at least once)",
            f"longest delivery delay: {self.longest_delay_s:.1f} s ({self.longest_delay_key})",
            f"duration: {self.duration_s:.0f} s; files in {self.folder}",
        ]
        lost = self.lost
        if not lost:
            out.append("lost 0")
        else:
            where = {k: "stream+files" for k in set(self.missing_stream) & set(self.missing_files)}
            where |= {k: "stream" for k in self.missing_stream if k not in where}
            where |= {k: "files" for k in self.missing_files if k not in where}
            out.append(f"lost {len(lost)}: " + " ".join(f"{k}({where[k]})" for k in lost))
        return out


def _seq_order(key: str) -> tuple[int, str]:
    _device, boot, seq = key.rsplit(":", 2)
    return int(seq), boot


def envelope_key(head: bytes) -> str:
    """``device:boot:seq`` from the first bytes of a signed payload (docs/PROTOCOL.md).

    Raises:
        ValueError: ``head`` does not start like an envelope.
    """
    if len(head) < 3 or head[0] != 0x92:
        raise ValueError("not a [signed, signature] array")
    skip = {0xC4: 2, 0xC5: 3, 0xC6: 5}.get(head[1])
    if skip is None:
        raise ValueError("signed part is not bytes")
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(head[1 + skip :])
    try:
        unpacker.read_array_header()
        _version, device, boot, seq = (unpacker.unpack() for _ in range(4))
    except (msgpack.OutOfData, msgpack.UnpackException) as exc:
        raise ValueError(f"envelope head cut short or malformed: {exc!r}") from exc
    if not isinstance(device, str) or not isinstance(boot, bytes) or not isinstance(seq, int):
        raise ValueError("envelope head: device, boot or seq of the wrong type")
    return f"{device}:{boot.hex()}:{seq}"


def read_sealed(outbox: Path) -> tuple[dict[str, int], Counter[str]]:
    """Every envelope the agent committed (key -> created_ms), and how many of each kind."""
    db = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT kind, created_ms, head FROM chaos_sealed").fetchall()
    finally:
        db.close()
    sealed = {envelope_key(bytes(head)): int(created) for _kind, created, head in rows}
    return sealed, Counter(kind for kind, _created, _head in rows)


def read_files(folder: Path) -> list[dict[str, object]]:
    """Every complete record in the bridges' JSONL files, rotated ones included."""
    records = []
    for name in BRIDGES:
        for path in sorted(folder.glob(f"{name}.jsonl*")):
            text = path.read_text()
            for line in text[: text.rfind("\n") + 1].splitlines():
                if line:
                    records.append(json.loads(line))
    return records


def judge(verdict: Verdict, stream: list[StoredMessage], files: list[dict[str, object]]) -> None:
    """Fill ``verdict`` from what the agent sealed, the stream and the files."""
    ids = Counter(m.msg_id for m in stream)
    verdict.stream_records = len(stream)
    verdict.stream_duplicates = sum(n - 1 for n in ids.values() if n > 1)
    first_stored: dict[str, float] = {}
    for m in stream:
        key = str(m.record.get("envelope"))
        stored = m.stored.timestamp()
        first_stored[key] = min(stored, first_stored.get(key, stored))
    file_keys = Counter(str(r.get("key")) for r in files)
    verdict.file_records = len(files)
    verdict.file_duplicates = sum(n - 1 for n in file_keys.values() if n > 1)
    in_files = {str(r.get("envelope")) for r in files}
    verdict.missing_stream = [k for k in verdict.sealed if k not in first_stored]
    verdict.missing_files = [k for k in verdict.sealed if k not in in_files]
    for key, created_ms in verdict.sealed.items():
        if key in first_stored:
            delay = first_stored[key] - created_ms / 1000
            if delay > verdict.longest_delay_s:
                verdict.longest_delay_s, verdict.longest_delay_key = delay, key


class Chaos:
    """One run: the fleet, the plan, and the kills as they happen."""

    def __init__(self, plan: Plan, folder: Path, say: Say) -> None:
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.fleet = Fleet(folder, speed=plan.speed, drive_s=plan.drive_s, seed=plan.seed)
        self.say = say
        self.verdict = Verdict(seed=plan.seed, folder=folder)
        self._down: list[tuple[int, str]] = []  # (cycle to restart after, what)

    def _pick(self, count: int, besides: frozenset[int] | set[int] = frozenset()) -> set[int]:
        return set(self.rng.sample(sorted(set(range(self.plan.agent_kills)) - besides), count))

    def run(self) -> Verdict:
        """Set up, kill, drain, check.

        Raises:
            StartError: a process of the run did not come up.
        """
        started = time.monotonic()
        fleet = self.fleet
        fleet.prepare()
        try:
            fleet.start_all()
            self._kill_loop()
            self._drain()
            stream = read_stream(fleet.nats.urls, STREAM)
        finally:
            fleet.stop_all()
        self.verdict.sealed, self.verdict.kinds = read_sealed(fleet.outbox)
        counters = open_status(fleet.outbox).counters
        self.verdict.evicted, self.verdict.dropped = counters["evicted"], counters["dropped"]
        judge(self.verdict, stream, read_files(fleet.folder))
        self.verdict.duration_s = time.monotonic() - started
        return self.verdict

    def _kill_loop(self) -> None:
        plan, rng = self.plan, self.rng
        blackouts = self._pick(plan.blackouts)
        brokers, bridges, nodes = (
            self._pick(plan.broker_kills, blackouts),
            self._pick(plan.bridge_kills, blackouts),
            self._pick(plan.nats_kills, blackouts),
        )
        for cycle in range(plan.agent_kills):
            if cycle in blackouts:
                self._blackout(cycle)
                continue
            self.fleet.start_agent()
            life = rng.uniform(*plan.agent_life_s)
            moments = [(life, "agent")]
            for chosen, what in ((brokers, "broker"), (bridges, "bridge"), (nodes, "nats")):
                if cycle in chosen:
                    moments.append((rng.uniform(0, life), what))
            begun = time.monotonic()
            for at, what in sorted(moments):
                time.sleep(max(0.0, begun + at - time.monotonic()))  # the random moment
                self._kill(what, cycle)
            self._restart_due(cycle)
            if (cycle + 1) % 20 == 0:
                self.say(f"  {cycle + 1} agent kills, {dict(self.verdict.kills)}")

    def _blackout(self, cycle: int) -> None:
        """Both bridges down, the agent publishing to the broker alone for a few seconds, then
        the broker SIGKILLed: whatever it acknowledged and had not saved is gone from it."""
        for name in BRIDGES:
            if self.fleet.running(name):
                self._kill(name, cycle)
        self.fleet.start_agent()
        life = self.rng.uniform(4.0, 8.0)
        begun = time.monotonic()
        broker_at = self.rng.uniform(life / 2, life)
        for at, what in ((broker_at, "broker"), (life, "agent")):
            time.sleep(max(0.0, begun + at - time.monotonic()))  # the random moment
            self._kill(what, cycle)
        self._down = [(after, what) for after, what in self._down if what not in BRIDGES]
        for name in BRIDGES:
            self._restart(name)

    def _kill(self, what: str, cycle: int) -> None:
        fleet = self.fleet
        if what in BRIDGES:  # this one, for a blackout
            self.verdict.kills["bridge"] += 1
            fleet.kill(what)
            return
        self.verdict.kills[what] += 1
        if what == "agent":
            fleet.kill("agent")
        elif what == "broker":
            fleet.kill("broker")
            fleet.start_broker()  # at once, on the same port and state: a crash and restart
        elif what == "bridge":
            name = self.rng.choice([b for b in BRIDGES if fleet.running(b)] or list(BRIDGES))
            fleet.kill(name)
            self._down.append((cycle + self.rng.randint(0, 2), name))
        else:
            node = self.rng.choice([n for n in fleet.nats.nodes if n.running])
            fleet.nats.kill(node)
            self._down.append((cycle + self.rng.randint(1, 5), node.name))

    def _restart_due(self, cycle: int) -> None:
        due = [what for after, what in self._down if after <= cycle]
        self._down = [(after, what) for after, what in self._down if after > cycle]
        for what in due:
            self._restart(what)

    def _restart(self, what: str) -> None:
        fleet = self.fleet
        if what in BRIDGES:
            fleet.start_bridge(what)
            return
        node = next(n for n in fleet.nats.nodes if n.name == what)
        fleet.nats.start_node(node)

    def _drain(self) -> None:
        """Everything up again; one agent without kills until its outbox is empty; then wait
        until the files hold every sealed envelope and the stream stops growing."""
        fleet, plan = self.fleet, self.plan
        for _after, what in self._down:
            self._restart(what)
        self._down = []
        if not fleet.running("broker"):
            fleet.start_broker()
        fleet.nats.wait_ready()
        self.say("  draining: one agent run to the end of the drive, no kills")
        replay_s = plan.drive_s / float(plan.speed.lstrip("x") or 1)
        for _attempt in range(3):
            agent = fleet.start_agent("--exit-when-done")
            try:
                agent.wait(replay_s + 300)
            except subprocess.TimeoutExpired:
                fleet.kill("agent")
            if open_status(fleet.outbox).depth == 0:
                break
        sealed, _kinds = read_sealed(fleet.outbox)
        deadline = time.monotonic() + plan.settle_s
        while time.monotonic() < deadline:
            in_files = {str(r.get("envelope")) for r in read_files(fleet.folder)}
            if all(k in in_files for k in sealed):
                break
            time.sleep(1.0)  # polling the files, with a deadline


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.chaos``: run, print the report, exit 0 only for ``lost 0``."""
    defaults = Plan(seed=0)
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, help="default: from the clock, printed")
    parser.add_argument("--agent-kills", type=int, default=defaults.agent_kills)
    parser.add_argument("--broker-kills", type=int, default=defaults.broker_kills)
    parser.add_argument("--bridge-kills", type=int, default=defaults.bridge_kills)
    parser.add_argument("--nats-kills", type=int, default=defaults.nats_kills)
    parser.add_argument(
        "--blackouts",
        type=int,
        default=defaults.blackouts,
        help="broker SIGKILLs while both bridges are down",
    )
    parser.add_argument("--drive-s", type=int, default=defaults.drive_s)
    parser.add_argument("--speed", default=defaults.speed, help="replay pace, xN")
    parser.add_argument("--folder", type=Path, help="where the run's files go (default: a temp)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    try:
        plan = Plan(
            seed=seed,
            agent_kills=args.agent_kills,
            broker_kills=args.broker_kills,
            bridge_kills=args.bridge_kills,
            nats_kills=args.nats_kills,
            blackouts=args.blackouts,
            drive_s=args.drive_s,
            speed=args.speed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    folder = args.folder or Path(tempfile.mkdtemp(prefix="canvoy-chaos-"))
    print(f"chaos: seed {seed} (repeat with --seed {seed}); files in {folder}", flush=True)
    try:
        verdict = Chaos(plan, folder, lambda line: print(line, flush=True)).run()
    except StartError as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    for line in verdict.lines():
        print(line)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())
