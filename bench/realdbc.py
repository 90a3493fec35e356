"""A real vehicle database and a realistic 1,000,000-frame log made from it, for benchmarks.

The database comes from the ``opendbc`` wheel on PyPI (downloaded, unzipped, never installed).
The log cycles every message at a realistic period; physical signals drift slowly, while
rolling counters and checksums change on every frame, as on a real car.
"""

from __future__ import annotations

import heapq
import random
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import can
import cantools
from cantools.database.can import Database, Message

CACHE = Path(__file__).resolve().parent / ".cache"
DBC_NAME = "vw_mqb.dbc"
CHANGE_P = (0.001, 0.02, 0.3)
CHANGE_WEIGHTS = (0.75, 0.2, 0.05)
FAST_PERIODS_S = (0.01, 0.01, 0.02, 0.02, 0.05)
SLOW_PERIODS_S = (0.1, 0.1, 0.2, 0.5, 1.0)


def opendbc_file(name: str = DBC_NAME) -> Path:
    """Path of ``name`` from the opendbc wheel, downloading the wheel once."""
    target = CACHE / "opendbc" / name
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("opendbc-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "opendbc",
            "-d",
            str(CACHE),
        ]
        subprocess.run(cmd, check=True)
        wheels = sorted(CACHE.glob("opendbc-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(f"/dbc/{name}"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(member))
    return target


def load(path: Path) -> Database:
    """Load a DBC as a CAN database."""
    db = cantools.database.load_file(str(path), strict=False)
    assert isinstance(db, Database)
    return db


def _page_signals(message: Message) -> list[cantools.database.can.Signal]:
    mux = next((s for s in message.signals if s.is_multiplexer), None)
    if mux is None:
        return list(message.signals)
    page = min(i for s in message.signals for i in (s.multiplexer_ids or []))
    return [
        s for s in message.signals if s is mux or not s.multiplexer_ids or page in s.multiplexer_ids
    ]


def _encodable(
    message: Message, signals: list[cantools.database.can.Signal], raw: dict[str, int]
) -> bool:
    full = dict(raw)
    for s in signals:
        if not s.is_multiplexer:
            full[s.name] = (1 << (s.length - 1)) - 1 if s.is_signed else (1 << s.length) - 1
    try:
        message.encode(full, scaling=False, strict=False)
    except Exception:
        return False
    return True


def make_log(db: Database, path: Path, frames: int, *, seed: int = 1) -> Path:
    """Write ``frames`` frames of ``db``'s messages at realistic periods to ``path``."""
    if path.is_file():
        return path
    rng = random.Random(seed)
    plans: list[tuple[float, int, float, Message, list[Any], dict[str, int], dict[str, float]]] = []
    for message in db.messages:
        signals = _page_signals(message)
        raw = {s.name: 0 for s in signals}
        # Most signals are states that rarely change; some drift; a few analog ones move often.
        change = {s.name: rng.choices(CHANGE_P, CHANGE_WEIGHTS)[0] for s in signals}
        mux = next((s for s in signals if s.is_multiplexer), None)
        if mux is not None:
            raw[mux.name] = min(i for s in message.signals for i in (s.multiplexer_ids or []))
        if not _encodable(message, signals, raw):
            continue  # a few real DBCs have signals that overrun their message
        # Fast, safety-relevant messages are the ones that carry counters and checksums.
        guarded = any("COUNTER" in s.name.upper() for s in signals)
        periods = FAST_PERIODS_S if guarded else SLOW_PERIODS_S
        period = periods[rng.randrange(len(periods))]
        plans.append((rng.uniform(0, period), len(plans), period, message, signals, raw, change))
    heapq.heapify(plans)
    t0 = 1_700_000_000.0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("partial-" + path.name)
    with can.Logger(str(tmp)) as logger:
        for _ in range(frames):
            t, order, period, message, signals, raw, change = heapq.heappop(plans)
            for s in signals:
                name = s.name.upper()
                top = (1 << s.length) - 1
                if "COUNTER" in name or "CHECKSUM" in name:
                    raw[s.name] = (
                        rng.randrange(top + 1) if "CHECKSUM" in name else (raw[s.name] + 1) & top
                    )
                elif not s.is_multiplexer and rng.random() < change[s.name]:
                    step = rng.choice((-1, 1))
                    low = -(top // 2) - 1 if s.is_signed else 0
                    high = top // 2 if s.is_signed else top
                    raw[s.name] = min(high, max(low, raw[s.name] + step))
            data = message.encode(raw, scaling=False, strict=False, padding=False)
            logger.on_message_received(
                can.Message(
                    timestamp=t0 + t,
                    arbitration_id=message.frame_id,
                    is_extended_id=message.is_extended_frame,
                    data=data,
                    channel=0,
                )
            )
            heapq.heappush(plans, (t + period, order, period, message, signals, raw, change))
    tmp.rename(path)
    return path
