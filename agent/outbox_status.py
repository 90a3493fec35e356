"""What ``canvoy agent status`` reads from an outbox: depth, age, counters and the events log.

It reads through any connection, the agent's own or a read-only one opened while the agent runs.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from canvoy.agent.unconfirmed import Unconfirmed, read_unconfirmed
from canvoy.errors import StoreError


@dataclass(frozen=True, slots=True)
class EventStatus:
    """One events envelope and what became of it."""

    seq: int
    created_ms: int
    summary: str
    acked_ms: int | None
    delivered_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStatus:
    """What ``canvoy agent status`` shows."""

    depth: int
    bytes: int
    events: int
    oldest_ms: int | None  # the oldest envelope the broker has not acknowledged yet
    unconfirmed: Unconfirmed
    rejected: int
    counters: dict[str, int]
    events_log: tuple[EventStatus, ...] = ()


def read_events(db: sqlite3.Connection, limit: int = 50) -> list[EventStatus]:
    """The newest events envelopes with their acknowledgement and delivery times."""
    rows = db.execute(
        "SELECT seq, created_ms, summary, acked_ms, delivered_ms FROM events "
        "ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [EventStatus(*row) for row in reversed(rows)]


def read_status(db: sqlite3.Connection) -> OutboxStatus:
    """Read the status of an outbox through any connection (the agent's or a read-only one)."""
    depth, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
    unconfirmed = read_unconfirmed(db)
    oldest = db.execute(
        "SELECT MIN(created_ms) FROM outbox"
        + (" WHERE sent_ms IS NULL" if unconfirmed.count else "")
    ).fetchone()[0]
    events = db.execute("SELECT COUNT(*) FROM outbox WHERE priority = 0").fetchone()[0]
    rejected = db.execute("SELECT COUNT(*) FROM rejected").fetchone()[0]
    counters = dict(db.execute("SELECT name, value FROM meta").fetchall())
    return OutboxStatus(
        depth=int(depth),
        bytes=int(size),
        events=int(events),
        oldest_ms=oldest,
        unconfirmed=unconfirmed,
        rejected=int(rejected),
        counters={k: int(v) for k, v in counters.items()},
        events_log=tuple(read_events(db)),
    )


def open_status(path: Path) -> OutboxStatus:
    """Status of the outbox at ``path`` without writing to it (safe while the agent runs).

    Raises:
        StoreError: there is no outbox at ``path`` or it cannot be read.
    """
    if not path.exists():
        raise StoreError(f"no outbox at {str(path)!r}: has the agent run with this config yet?")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            return read_status(db)
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read outbox {str(path)!r}: {exc}") from exc
