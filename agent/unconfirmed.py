"""Envelopes the broker acknowledged and no bridge has confirmed yet: kept, republished, counted.

With ``delivery: bridge`` a PUBACK does not delete a row: it stamps ``sent_ms`` (the first
acknowledgement) and ``due_ms`` (when to publish it again, byte for byte, if no bridge has
confirmed it by then). Each republish doubles the wait, up to ``republish_max_s``, so that a
bridge that is down for hours does not get the same envelope queued for it every few seconds.
A bridge's confirmation (``canvoy.wire.confirm``) deletes the rows it names. With
``delivery: broker`` the PUBACK deletes the row, as the outbox always did.

These functions run inside the outbox's lock and transactions (``agent/outbox.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Literal

from canvoy.errors import ConfigError
from canvoy.wire.envelope import unpack
from canvoy.wire.errors import EnvelopeError
from canvoy.wire.topics import Kind

Mode = Literal["bridge", "broker"]
MAX_DOUBLINGS = 20
_COLUMNS = {
    "boot": "BLOB",
    "sent_ms": "INTEGER",  # the first PUBACK; NULL: never acknowledged by the broker
    "due_ms": "INTEGER",  # when it is published again unless confirmed first
    "attempts": "INTEGER NOT NULL DEFAULT 0",  # PUBACKs so far
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (priority, seq) WHERE sent_ms IS NULL;
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due_ms) WHERE due_ms IS NOT NULL;
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """When an envelope may leave the outbox; see docs/CONFIG.md (delivery)."""

    mode: Mode = "bridge"
    confirm_timeout_s: float = 30.0
    republish_max_s: float = 900.0

    def __post_init__(self) -> None:
        if self.mode not in ("bridge", "broker"):
            raise ConfigError(f"must be bridge or broker, got {self.mode!r}", key="mode")
        if not 0.5 <= self.confirm_timeout_s <= 86400:
            raise ConfigError(
                f"must be 0.5..86400 seconds, got {self.confirm_timeout_s}",
                key="confirm_timeout_s",
            )
        if not self.confirm_timeout_s <= self.republish_max_s <= 7 * 86400:
            raise ConfigError(
                f"must be confirm_timeout_s..604800 seconds, got {self.republish_max_s}",
                key="republish_max_s",
            )


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """Envelopes sent (acknowledged by the broker) and not yet confirmed by a bridge."""

    count: int
    bytes: int
    oldest_sent_ms: int | None


def migrate(db: sqlite3.Connection) -> None:
    """Add the delivery columns to an outbox made before them; name each old row's boot."""
    have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    for name, decl in _COLUMNS.items():
        if name not in have:
            db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
    db.executescript(_INDEXES)
    rows = db.execute("SELECT seq, payload FROM outbox WHERE boot IS NULL").fetchall()
    named = []
    for seq, payload in rows:
        try:
            named.append((unpack(bytes(payload)).envelope.boot, seq))
        except EnvelopeError:
            continue  # cannot be confirmed by boot; it stays until evicted or rejected
    db.executemany("UPDATE outbox SET boot = ? WHERE seq = ?", named)


def mark_sent(
    db: sqlite3.Connection, seqs: Iterable[int], now_ms: int, config: DeliveryConfig
) -> None:
    """Stamp acknowledged rows with their first PUBACK and when they are due again."""
    db.executemany(
        "UPDATE outbox SET sent_ms = COALESCE(sent_ms, :now), attempts = attempts + 1, "
        "due_ms = :now + MIN(:wait * (1 << MIN(attempts, :doublings)), :most) WHERE seq = :seq",
        [
            {
                "now": now_ms,
                "wait": int(config.confirm_timeout_s * 1000),
                "most": int(config.republish_max_s * 1000),
                "doublings": MAX_DOUBLINGS,
                "seq": seq,
            }
            for seq in seqs
        ],
    )


def due(
    db: sqlite3.Connection, now_ms: int, limit: int, config: DeliveryConfig
) -> list[tuple[int, Kind, bytes]]:
    """Unconfirmed rows whose wait is over, the longest-waiting first.

    No wait is longer than ``republish_max_s``, so a row due later than that was stamped by a
    wall clock that has since gone back (a vehicle's clock set right by NTP or GNSS after a
    boot in the future): it is due now, not when the wrong clock said.
    """
    return db.execute(
        "SELECT seq, kind, payload FROM outbox WHERE due_ms IS NOT NULL "
        "AND (due_ms <= :now OR due_ms > :now + :most) ORDER BY due_ms LIMIT :limit",
        {"now": now_ms, "most": int(config.republish_max_s * 1000), "limit": limit},
    ).fetchall()


def unsent(db: sqlite3.Connection, limit: int) -> list[tuple[int, Kind, bytes]]:
    """Rows never acknowledged by the broker: events first, then oldest first."""
    return db.execute(
        "SELECT seq, kind, payload FROM outbox WHERE sent_ms IS NULL "
        "ORDER BY priority, seq LIMIT ?",
        (limit,),
    ).fetchall()


def confirm(
    db: sqlite3.Connection,
    ranges: Iterable[tuple[bytes, int, int]],
    delivered_ms: int,
    published: Collection[int],
) -> tuple[list[int], int]:
    """Delete the rows a bridge confirmed and mark its events delivered; return the deleted
    rows' sequence numbers and their bytes.

    Only rows that were ever published can have reached a bridge: those the broker has
    acknowledged, and ``published`` (handed to the publisher by this process, a confirmation
    may overtake its PUBACK). A range over anything else (a bridge's mistake, or a stolen
    bridge key aimed at the backlog of a vehicle that has been offline) deletes nothing there.
    """
    deleted: list[int] = []
    size = 0
    for boot, first, last in ranges:
        extra = sorted(s for s in published if first <= s <= last)
        also = f" OR seq IN ({','.join('?' * len(extra))})" if extra else ""
        where = f"seq BETWEEN ? AND ? AND boot = ? AND (sent_ms IS NOT NULL{also})"
        gone = db.execute(
            f"DELETE FROM outbox WHERE {where} RETURNING seq, size", (first, last, boot, *extra)
        ).fetchall()
        db.execute(
            "UPDATE events SET delivered_ms = ? WHERE seq BETWEEN ? AND ? AND boot = ? "
            f"AND delivered_ms IS NULL AND (acked_ms IS NOT NULL{also})",
            (delivered_ms, first, last, boot.hex(), *extra),
        )
        deleted.extend(seq for seq, _size in gone)
        size += sum(int(row_size) for _seq, row_size in gone)
    return deleted, size


def read_unconfirmed(db: sqlite3.Connection) -> Unconfirmed:
    """Count and age of the sent-but-unconfirmed rows (zero for an outbox made before them)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    if "sent_ms" not in have:
        return Unconfirmed(0, 0, None)
    count, size, oldest = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(sent_ms) FROM outbox "
        "WHERE sent_ms IS NOT NULL"
    ).fetchone()
    return Unconfirmed(int(count), int(size), oldest)
