"""The durable SQLite outbox: every envelope is signed and committed here before it is sent.

A row leaves when a bridge confirmed it as forwarded (``delivery: bridge``, the default; the
broker's PUBACK only marks it sent, see ``unconfirmed``), when the broker acknowledged it
(``delivery: broker``), or when the broker refused it (then it moves to ``rejected``). The next
sequence number is written in the same transaction as the row, so it never goes back or repeats
after a crash. When the outbox reaches ``max_bytes`` or the disk is full, the oldest telemetry
is evicted first and events last (within each, what the broker has already acknowledged goes
before what it never got); every eviction is counted. Open fault episodes are written in the
transaction of the events envelope that opens, changes or closes them (``episode_store``), so
after a crash they match the stored envelopes exactly.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.episode_store import EPISODES_SCHEMA, read_episodes, store_changes
from canvoy.agent.episodes import Change, Episode
from canvoy.agent.outbox_status import EventStatus, OutboxStatus, open_status, read_status
from canvoy.agent.unconfirmed import DeliveryConfig, confirm, due, mark_sent, migrate, unsent
from canvoy.errors import ConfigError, StoreError
from canvoy.wire import body
from canvoy.wire.envelope import Encoding, Envelope, parse_key, sign
from canvoy.wire.errors import EnvelopeError, OversizeError
from canvoy.wire.events import AgentEvent, parse_events
from canvoy.wire.topics import Kind

log = logging.getLogger(__name__)
# Re-exported: status readers import them from here as well.
__all__ = ["EventStatus", "Outbox", "OutboxConfig", "OutboxStatus", "Row", "open_status"]

Sync = Literal["full", "normal"]
WAL_PAGES = 256
EVICTION_WARNING_S = 60.0
# Kept free on the disk so that the WAL can always take the writes that evict and checkpoint.
DISK_RESERVE_BYTES = 4 * WAL_PAGES * 4096
PRIORITY: dict[str, int] = {"events": 0, "telemetry": 1}
_FULL_ERRORS = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    boot TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    summary TEXT NOT NULL,
    acked_ms INTEGER,
    delivered_ms INTEGER
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    rejected_ms INTEGER NOT NULL,
    code INTEGER NOT NULL,
    reason TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""
COUNTERS = (
    "next_seq",
    "acked",
    "confirmed",
    "last_ack_ms",
    "evicted",
    "evicted_bytes",
    "evicted_events",
    "rejected",
    "dropped",
    "disk_full",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxConfig:
    """Where the outbox lives and how much it may hold."""

    path: Path = Path("canvoy-outbox.sqlite")
    sync: Sync = "full"
    max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < 1024 * 1024:
            raise ConfigError(f"max_bytes {self.max_bytes} is below the 1 MiB minimum")


@dataclass(frozen=True, slots=True)
class Row:
    """One stored envelope waiting for its acknowledgement."""

    seq: int
    kind: Kind
    payload: bytes


def _now_ms() -> int:
    return int(time.time() * 1000)


def _connect(path: Path, sync: Sync, page_limit: int | None) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    # A small WAL: on a full disk there is then little left in it to checkpoint.
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
    if page_limit is not None:
        db.execute(f"PRAGMA max_page_count={int(page_limit)}")
    check = db.execute("PRAGMA quick_check").fetchone()
    if check is None or check[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
    db.executescript(_SCHEMA + EPISODES_SCHEMA)
    migrate(db)
    db.executemany(
        "INSERT OR IGNORE INTO meta (name, value) VALUES (?, ?)",
        [(n, 1 if n == "next_seq" else 0) for n in COUNTERS],
    )
    return db


def _move_aside(path: Path, exc: Exception) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            part.rename(Path(f"{target}{suffix}"))
    log.error(
        "outbox %s is corrupt (%s): moved it to %s and started a new one; "
        "sequence numbers start again under the new boot id",
        path,
        exc,
        target,
    )
    return target


class Outbox:
    """Signed envelopes of one device, stored until confirmed or acknowledged. Thread-safe."""

    def __init__(
        self,
        config: OutboxConfig,
        *,
        device: str,
        boot: bytes,
        key: ec.EllipticCurvePrivateKey,
        delivery: DeliveryConfig | None = None,
        page_limit: int | None = None,
    ) -> None:
        """Open (or create) the outbox; a corrupt file is moved aside and replaced.

        ``page_limit`` caps the database's pages, which SQLite reports exactly like a full disk.

        Raises:
            StoreError: the outbox cannot be created at all (directory missing, no permission).
        """
        self.config = config
        self.delivery = delivery or DeliveryConfig()
        self.device = device
        self.boot = boot
        self._key = key
        self._lock = threading.Lock()
        self._warned_at = -EVICTION_WARNING_S
        self._evicted_since_warning = 0
        self.moved_aside: Path | None = None
        self.sealed: Counter[str] = Counter()  # envelopes committed by this process, by kind
        path = config.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = _connect(path, config.sync, page_limit)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                    raise
                self.moved_aside = _move_aside(path, exc)
                self._db = _connect(path, config.sync, page_limit)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open outbox {str(path)!r}: {exc}; check the directory exists and is "
                "writable (outbox.path in the agent config)"
            ) from exc
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        )
        self.listeners: list[threading.Event] = []
        # Rows handed to the publisher and not acknowledged yet: with those the broker has
        # acknowledged, all that a bridge can have seen, so all that it may confirm.
        self._published: set[int] = set()
        # The next sequence number, also in memory so that ``reserve`` never waits for the
        # database: a bus thread may reserve while the sealing thread is inside an fsync.
        self._seq_lock = threading.Lock()
        self._next_seq = int(
            self._db.execute("SELECT value FROM meta WHERE name = 'next_seq'").fetchone()[0]
        )

    def reserve(self) -> int:
        """Take the next sequence number now, for an envelope sealed later with ``seq=``.

        A reserved number that is never sealed (dropped, or the process is killed first) is
        a gap in the sequence, like an eviction; after a restart it may be used again under the
        new boot id, where its idempotency key is still unique.
        """
        with self._seq_lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    def _give_back(self, seq: int) -> None:
        """Return an unused number if nothing was reserved after it (a dropped batch)."""
        with self._seq_lock:
            if self._next_seq == seq + 1:
                self._next_seq = seq

    # -- writing ---------------------------------------------------------------------------

    def seal(
        self,
        kind: Kind,
        encoding: Encoding,
        data: bytes,
        seq: int | None = None,
        episodes: Sequence[Change] = (),
    ) -> int | None:
        """Sign ``data`` as envelope ``seq`` (default: the next number) and commit it; return
        its sequence number.

        ``episodes`` (events only) are stored or removed in the same transaction.

        Never raises for a full outbox or disk: the oldest telemetry is evicted to make room,
        and a batch that still does not fit is counted as dropped and logged (None).
        """
        reserved = seq is not None
        number = seq if seq is not None else self.reserve()
        sealed = self._seal(kind, encoding, data, number, episodes)
        if sealed is None and not reserved:
            self._give_back(number)
        return sealed

    def _seal(
        self, kind: Kind, encoding: Encoding, data: bytes, number: int, episodes: Sequence[Change]
    ) -> int | None:
        with self._lock:
            for attempt in range(8):
                try:
                    seq = self._insert(kind, encoding, data, number, episodes)
                except OversizeError as exc:
                    self._rollback()  # else every later seal fails inside this transaction
                    log.error("batch dropped: %s", exc)
                    self._bump("dropped")
                    return None
                except sqlite3.OperationalError as exc:
                    self._rollback()
                    if getattr(exc, "sqlite_errorcode", None) not in _FULL_ERRORS:
                        log.error("outbox write failed (%s): batch dropped", exc)
                        self._bump("dropped")
                        return None
                    log.warning("outbox %s: disk full (%s), evicting", self.config.path, exc)
                    self._bump("disk_full")
                    if not self._evict_for(len(data) * 2 ** (attempt + 1)):
                        break
                else:
                    self.sealed[kind] += 1
                    for event in self.listeners:
                        event.set()
                    return seq
            log.error(
                "outbox %s: no room for a %s batch even after evicting; dropped",
                self.config.path,
                kind,
            )
            self._bump("dropped")
            return None

    def _insert(
        self, kind: Kind, encoding: Encoding, data: bytes, seq: int, episodes: Sequence[Change]
    ) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        created = _now_ms()
        envelope = Envelope(
            device=self.device,
            boot=self.boot,
            seq=seq,
            kind=kind,
            created_ms=created,
            encoding=encoding,
            body=data,
        )
        payload = sign(envelope, self._key)
        over_cap = self._bytes + len(payload) - self.config.max_bytes
        over_disk = len(payload) + DISK_RESERVE_BYTES - self._room()
        if over_disk > 0:
            db.execute("UPDATE meta SET value = value + 1 WHERE name = 'disk_full'")
        if max(over_cap, over_disk) > 0:
            self._evict(max(over_cap, over_disk))
        db.execute(
            "INSERT INTO outbox (seq, priority, kind, created_ms, size, payload, boot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, PRIORITY.get(kind, 0), kind, created, len(payload), payload, self.boot),
        )
        db.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = 'next_seq'", (seq + 1,))
        if kind == "events":
            db.execute(
                "INSERT INTO events (seq, boot, created_ms, summary) VALUES (?, ?, ?, ?)",
                (seq, self.boot.hex(), created, _summary(data, encoding)),
            )
        store_changes(db, episodes, seq)
        db.execute("COMMIT")
        self._bytes += len(payload)
        return seq

    def _room(self) -> int:
        """Bytes the database can still grow into: free disk space plus its own free pages."""
        try:
            fs = os.statvfs(self.config.path.parent)
        except OSError:
            return 1 << 62
        pages, size = (
            self._db.execute("PRAGMA freelist_count").fetchone()[0],
            self._db.execute("PRAGMA page_size").fetchone()[0],
        )
        return int(fs.f_bavail * fs.f_frsize + pages * size)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.debug("rollback: %s", exc)
        self._bytes = int(
            self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        )

    def _evict(self, need: int) -> int:
        """Delete oldest telemetry, then oldest events, until ``need`` bytes are free; in each,
        rows the broker acknowledged first (they most likely reached a bridge already)."""
        db = self._db
        freed = 0
        for priority in (PRIORITY["telemetry"], PRIORITY["events"]):
            rows = db.execute(
                "SELECT seq, size FROM outbox WHERE priority = ? ORDER BY sent_ms IS NULL, seq",
                (priority,),
            )
            doomed = []
            for seq, size in rows:
                if freed >= need:
                    break
                doomed.append((seq,))
                freed += size
            if doomed:
                db.executemany("DELETE FROM outbox WHERE seq = ?", doomed)
                n = len(doomed)
                db.execute("UPDATE meta SET value = value + ? WHERE name = 'evicted'", (n,))
                db.execute(
                    "UPDATE meta SET value = value + ? WHERE name = 'evicted_bytes'", (freed,)
                )
                if priority == PRIORITY["events"]:
                    db.execute(
                        "UPDATE meta SET value = value + ? WHERE name = 'evicted_events'", (n,)
                    )
                self._note_eviction(n, priority, freed)
            if freed >= need:
                break
        self._bytes -= freed
        return freed

    def _note_eviction(self, n: int, priority: int, freed: int) -> None:
        """Warn about evictions: the first at once, then a summary at most once a minute."""
        self._evicted_since_warning += n
        now = time.monotonic()
        if priority == PRIORITY["events"] or now - self._warned_at >= EVICTION_WARNING_S:
            log.warning(
                "outbox %s full (max_bytes or disk): evicted %d oldest %s envelope(s) "
                "(%d bytes just now); 'canvoy agent status' shows the totals",
                self.config.path,
                self._evicted_since_warning,
                "event" if priority == PRIORITY["events"] else "telemetry",
                freed,
            )
            self._evicted_since_warning = 0
            self._warned_at = now

    def _evict_for(self, need: int) -> bool:
        """Free space after a full disk in its own transaction; False when nothing is left.

        The WAL is checkpointed and truncated first and after: on a full disk the WAL itself
        is often what filled it, and deleted pages are only reusable once checkpointed.
        """
        self._checkpoint()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            freed = self._evict(need)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.error("outbox %s: cannot evict on a full disk: %s", self.config.path, exc)
            return False
        self._checkpoint()
        return freed > 0

    def _checkpoint(self) -> None:
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.debug("checkpoint on a full disk: %s", exc)

    def _bump(self, name: str, by: int = 1) -> None:
        try:
            self._db.execute("UPDATE meta SET value = value + ? WHERE name = ?", (by, name))
        except sqlite3.Error as exc:  # a counter must never take the agent down
            log.debug("counter %s not updated: %s", name, exc)

    # -- publishing side -------------------------------------------------------------------

    def pending(self, limit: int, skip: Iterable[int] = ()) -> list[Row]:
        """Up to ``limit`` rows to send next: rows never sent, events first and then oldest
        first; then unconfirmed rows whose wait is over (published again), so that republishing
        takes only the capacity that new envelopes leave."""
        skipped = set(skip)
        with self._lock:
            rows = unsent(self._db, limit + len(skipped))
            if len(rows) < limit + len(skipped):
                rows += due(self._db, _now_ms(), limit + len(skipped), self.delivery)
            out = [Row(s, k, p) for s, k, p in rows if s not in skipped][:limit]
            self._published.update(row.seq for row in out)
        return out

    def unsent(self) -> int:
        """Rows the broker has not acknowledged yet."""
        with self._lock:
            return int(
                self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_ms IS NULL").fetchone()[0]
            )

    def acknowledge(self, seqs: list[int]) -> None:
        """Record the broker's PUBACKs, in one transaction: with ``delivery: broker`` the rows
        leave; with ``delivery: bridge`` they stay until a bridge confirms them."""
        if not seqs:
            return
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                now = _now_ms()
                sizes = 0
                if self.delivery.mode == "bridge":
                    mark_sent(db, seqs, now, self.delivery)
                else:
                    sizes = db.execute(
                        f"SELECT COALESCE(SUM(size), 0) FROM outbox WHERE seq IN "
                        f"({','.join('?' * len(seqs))})",
                        seqs,
                    ).fetchone()[0]
                    db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])
                db.execute("UPDATE meta SET value = value + ? WHERE name = 'acked'", (len(seqs),))
                db.execute("UPDATE meta SET value = ? WHERE name = 'last_ack_ms'", (now,))
                db.executemany(
                    "UPDATE events SET acked_ms = ? WHERE seq = ? AND acked_ms IS NULL",
                    [(now, s) for s in seqs],
                )
                db.execute("COMMIT")
                self._bytes -= int(sizes)
                self._published.difference_update(seqs)
            except sqlite3.Error as exc:
                # The rows stay and are sent again: a duplicate, never a loss.
                self._rollback()
                log.error("outbox: cannot record %d acknowledgement(s): %s", len(seqs), exc)

    def reject(self, seq: int, code: int, reason: str) -> None:
        """Move a row the broker refused to ``rejected`` with the reason."""
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO rejected "
                    "(seq, kind, created_ms, rejected_ms, code, reason, payload) "
                    "SELECT seq, kind, created_ms, ?, ?, ?, payload FROM outbox WHERE seq = ?",
                    (_now_ms(), code, reason, seq),
                )
                size = db.execute("SELECT size FROM outbox WHERE seq = ?", (seq,)).fetchone()
                db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                db.execute("UPDATE meta SET value = value + 1 WHERE name = 'rejected'")
                db.execute("COMMIT")
                self._bytes -= int(size[0]) if size else 0
                self._published.discard(seq)
            except sqlite3.Error as exc:
                self._rollback()
                log.error("outbox: cannot move envelope %d to rejected: %s", seq, exc)
                return
        log.error(
            "broker refused envelope %d (reason 0x%02X %s): kept in 'rejected'", seq, code, reason
        )

    def confirm(self, ranges: Sequence[tuple[bytes, int, int]], delivered_ms: int) -> int:
        """Delete the rows a bridge confirmed as forwarded ((boot, first, last) ranges) and mark
        its events delivered; return how many rows left."""
        if not ranges:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                gone, size = confirm(self._db, ranges, delivered_ms, self._published)
                self._db.execute(
                    "UPDATE meta SET value = value + ? WHERE name = 'confirmed'", (len(gone),)
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                # The rows stay and are published again: a duplicate, never a loss.
                self._rollback()
                log.error("outbox: cannot record a confirmation: %s", exc)
                return 0
            self._bytes -= size
            self._published.difference_update(gone)
        return len(gone)

    def record_receipt(self, keys: Sequence[str], delivered_ms: int) -> int:
        """Mark events a bridge confirmed as durably forwarded; return how many were known.

        ``keys`` are ``device:boot:seq[:index]`` idempotency keys.
        """
        marks = []
        for key in keys:
            named = parse_key(key, record=True)
            if named is None or named[0] != self.device:
                continue  # not one of ours, or not a key at all: a bridge's word, not a fault
            _device, boot, seq = named
            marks.append((delivered_ms, seq, boot.hex()))
        if not marks:
            return 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "UPDATE events SET delivered_ms = ? WHERE seq = ? AND boot = ?", marks
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                log.error("outbox: cannot record a delivery receipt: %s", exc)
                return 0
        return len(marks)

    def open_episodes(self) -> list[Episode]:
        """The fault episodes open when the agent last stopped, oldest first."""
        with self._lock:
            return read_episodes(self._db)

    def depth(self) -> int:
        """Rows waiting to be sent."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def status(self) -> OutboxStatus:
        """Depth, bytes, age and counters."""
        with self._lock:
            return read_status(self._db)

    def close(self) -> None:
        """Checkpoint and close the database."""
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.debug("checkpoint at close: %s", exc)
            self._db.close()


def _summary(data: bytes, encoding: Encoding) -> str:
    """A short text for an events envelope: its DTC codes and states."""
    try:
        events = parse_events(body.decode(encoding, data))
    except EnvelopeError:
        return "?"
    parts = [f"{e.what}" if isinstance(e, AgentEvent) else f"{e.code} {e.state}" for e in events]
    return ", ".join(parts) or "-"
