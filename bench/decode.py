"""Decode throughput: a bare LogReader + cantools loop against the agent's replay path.

Run: python bench/decode.py [--frames N]. Prints frames/s for both and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.venv import reexec_in_venv

reexec_in_venv()

import can
from cantools.database.can import Database

from bench.realdbc import CACHE, load, make_log, opendbc_file
from canvoy.agent.collect import Collector, Sample
from canvoy.agent.database import build_index
from canvoy.agent.policy import load_policy
from canvoy.agent.source import read_log


def bare(path: Path, db: Database) -> tuple[float, int]:
    """(a): what a script does: read every frame, decode every known one with cantools."""
    decode = db.decode_message
    decoded = 0
    start = time.perf_counter()
    for msg in can.LogReader(str(path)):
        try:
            decode(msg.arbitration_id, msg.data, decode_choices=True)  # type: ignore[arg-type]
        except KeyError:
            continue
        decoded += 1
    return time.perf_counter() - start, decoded


def agent(path: Path, db: Database) -> tuple[float, Collector, int]:
    """(b): the agent's replay -> decode -> policy path with the default policy."""
    samples: list[Sample] = []
    collector = Collector(
        bus="pt",
        index=build_index([db]),
        policy=load_policy(None),
        emit=samples.append,
    )
    on_frame = collector.on_message_received
    start = time.perf_counter()
    for msg in read_log(path):
        on_frame(msg)
    return time.perf_counter() - start, collector, len(samples)


def repeat_share(path: Path) -> float:
    """Share of frames whose bytes equal the previous frame of the same id."""
    last: dict[int, bytes] = {}
    same = Counter[bool]()
    for msg in can.LogReader(str(path)):
        data = bytes(msg.data)
        same[last.get(msg.arbitration_id) == data] += 1
        last[msg.arbitration_id] = data
    return same[True] / max(1, same[True] + same[False])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=1_000_000)
    args = parser.parse_args()
    dbc = opendbc_file()
    db = load(dbc)
    log = make_log(db, CACHE / f"vw_mqb_{args.frames}.blf", args.frames)
    print(
        f"database {dbc.name}: {len(db.messages)} messages; log {log.name}: {args.frames:,} frames"
    )
    print(
        f"frames repeating the previous payload of their id byte for byte: {repeat_share(log):.0%}"
    )
    seconds_a, decoded_a = bare(log, db)
    seconds_b, collector, samples = agent(log, db)
    rate_a, rate_b = args.frames / seconds_a, args.frames / seconds_b
    s = collector.stats
    print(f"(a) LogReader + decode_message: {rate_a:>10,.0f} frames/s ({decoded_a:,} decodes)")
    print(
        f"(b) canvoy replay->decode->policy: {rate_b:>7,.0f} frames/s ({s.decoded:,} decodes, "
        f"{s.repeated:,} skipped by the signal mask, {samples:,} samples)"
    )
    print(f"ratio (b)/(a): {rate_b / rate_a:.2f}")


if __name__ == "__main__":
    main()
