"""The bridge's own SQLite file: what it admitted, what each sink still has to take, and what
no sink could ever take. It survives restarts, so a restarted bridge forwards nothing twice.

Tables:
    seen      device, boot, seq of every admitted envelope (the replay window, pruned to it)
    status    the newest status per device, by its order (verify.StatusOrder: connection start,
              offline after online, creation time); an older one changes nothing
    certs     the device certificates learned from births, so a restarted bridge knows the keys
              before the retained births come back (they arrive after the session's backlog)
    spool     records waiting for one sink, in order; a row goes when the sink took it
    dead      records a sink refused for good, with the reason

The main thread writes admitted envelopes, status times and spooled records in one transaction
before it acknowledges the messages to the broker; each sink's thread reads and deletes its own
rows through its own connection (SQLite connections are not shared between threads).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from canvoy.errors import StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL, boot BLOB NOT NULL, seq INTEGER NOT NULL, at_ns INTEGER NOT NULL,
    PRIMARY KEY (device, boot, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS status (
    device TEXT PRIMARY KEY, created_ms INTEGER NOT NULL,
    connected_ms INTEGER, offline INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS certs (
    device TEXT NOT NULL, pem TEXT NOT NULL, PRIMARY KEY (device, pem));
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, key TEXT NOT NULL,
    envelope TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL,
    UNIQUE (sink, key));
CREATE INDEX IF NOT EXISTS spool_envelope ON spool (envelope);
CREATE INDEX IF NOT EXISTS spool_order ON spool (sink, id);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, key TEXT NOT NULL,
    envelope TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL, text TEXT NOT NULL);
"""
PRUNE_EVERY = 200  # commits between prunings of the replay window
MAX_BOOTS = 8  # boots per device remembered (verify.MAX_BOOTS_PER_DEVICE)


@dataclass(frozen=True, slots=True)
class Spooled:
    """One record waiting for one sink."""

    id: int
    sink: str
    key: str
    envelope: str
    device: str
    kind: str
    text: str


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=True)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # acknowledged to the broker = on disk
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(status)")}
        if "connected_ms" not in columns:  # a state file from before the status order
            db.execute("ALTER TABLE status ADD COLUMN connected_ms INTEGER")
            db.execute("ALTER TABLE status ADD COLUMN offline INTEGER NOT NULL DEFAULT 0")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"bridge state {path} cannot be used: {exc}") from exc
    return db


def _per_sink(db: sqlite3.Connection, table: str) -> dict[str, int]:
    return dict(db.execute(f"SELECT sink, count(*) FROM {table} GROUP BY sink"))


def read_depths(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Records waiting and dead letters per sink, read-only in one snapshot (any thread).

    Raises:
        sqlite3.Error: the file cannot be read.
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.execute("BEGIN")
        return _per_sink(db, "spool"), _per_sink(db, "dead")
    finally:
        db.close()


class BridgeState:
    """The main thread's handle on the state file."""

    def __init__(self, path: Path, window: int) -> None:
        """Open (or create) the state file.

        Raises:
            StoreError: the file cannot be opened or is not a state file.
        """
        self.path = path
        self.window = window
        self._db = _connect(path)
        self._commits = 0

    def seen(self) -> Iterator[tuple[str, bytes, int]]:
        """Every remembered (device, boot, seq), in the order they were admitted (so that the
        window keeps a device's most recent boots)."""
        yield from self._db.execute("SELECT device, boot, seq FROM seen ORDER BY at_ns, seq")

    def statuses(self) -> dict[str, tuple[int, int, int]]:
        """The newest status's order per device: (connection start, offline, created_ms)."""
        rows = self._db.execute(
            "SELECT device, coalesce(connected_ms, created_ms), offline, created_ms FROM status"
        )
        return {
            device: (connected, offline, created) for device, connected, offline, created in rows
        }

    def certs(self) -> list[tuple[str, str]]:
        """Every (device, certificate PEM) learned so far."""
        return list(self._db.execute("SELECT device, pem FROM certs"))

    def forget_cert(self, device: str, pem: str) -> None:
        """Drop a certificate that is no longer trusted (expired, revoked)."""
        self._db.execute("DELETE FROM certs WHERE device = ? AND pem = ?", (device, pem))

    def commit(
        self,
        *,
        admitted: Sequence[tuple[str, bytes, int]] = (),
        statuses: Sequence[tuple[str, tuple[int, int, int]]] = (),
        certs: Sequence[tuple[str, str]] = (),
        spooled: Sequence[tuple[str, str, str, str, str, str]] = (),
        dead: Sequence[tuple[str, str, str, str, str, str, str]] = (),
    ) -> None:
        """Write admitted envelopes, status times, spooled records (sink, key, envelope, device,
        kind, text) and dead letters (the same and a reason) in one durable transaction.

        Raises:
            StoreError: the disk refused it; nothing was written.
        """
        now = int(time.time() * 1000)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                at_ns = time.time_ns()
                self._db.executemany(
                    f"INSERT OR IGNORE INTO seen VALUES (?, ?, ?, {at_ns})", admitted
                )
                self._db.executemany(
                    "INSERT INTO status (device, connected_ms, offline, created_ms) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET "
                    "connected_ms = excluded.connected_ms, offline = excluded.offline, "
                    "created_ms = excluded.created_ms WHERE "
                    "(excluded.connected_ms, excluded.offline, excluded.created_ms) > "
                    "(coalesce(status.connected_ms, status.created_ms), status.offline, "
                    "status.created_ms)",
                    [(device, *order) for device, order in statuses],
                )
                self._db.executemany("INSERT OR IGNORE INTO certs VALUES (?, ?)", certs)
                self._db.executemany(
                    "INSERT OR IGNORE INTO spool (sink, key, envelope, device, kind, text) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    spooled,
                )
                self._db.executemany(
                    "INSERT INTO dead (sink, key, envelope, device, kind, text, reason, at_ms) "
                    f"VALUES (?, ?, ?, ?, ?, ?, ?, {now})",
                    dead,
                )
        except sqlite3.Error as exc:
            raise StoreError(f"bridge state {self.path}: {exc}") from exc
        self._commits += 1
        if self._commits % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Forget sequence numbers the replay window has left behind, and boots beyond the
        last MAX_BOOTS of each device."""
        self._db.execute(
            "DELETE FROM seen WHERE (device, boot) IN (SELECT device, boot FROM ("
            "SELECT device, boot, row_number() OVER (PARTITION BY device ORDER BY max(at_ns) "
            "DESC) AS recent FROM seen GROUP BY device, boot) WHERE recent > ?)",
            (MAX_BOOTS,),
        )
        self._db.execute(
            "DELETE FROM seen WHERE seq < (SELECT max(s.seq) FROM seen s "
            "WHERE s.device = seen.device AND s.boot = seen.boot) - ?",
            (self.window,),
        )

    def holds(self, envelope: str) -> bool:
        """True while some sink still has a record of ``envelope`` to take.

        Raises:
            StoreError: the file cannot be read.
        """
        try:
            row = self._db.execute(
                "SELECT 1 FROM spool WHERE envelope = ? LIMIT 1", (envelope,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"bridge state {self.path}: {exc}") from exc
        return row is not None

    def depth(self) -> dict[str, int]:
        """Records waiting, per sink."""
        return _per_sink(self._db, "spool")

    def dead_letters(self) -> dict[str, int]:
        """Dead letters, per sink."""
        return _per_sink(self._db, "dead")

    def close(self) -> None:
        """Close the main thread's connection."""
        self._db.close()


class SpoolReader:
    """One sink thread's handle on the state file: its oldest records, and their settlement."""

    def __init__(self, path: Path, sink: str) -> None:
        """Open a connection for this thread.

        Raises:
            StoreError: the file cannot be opened.
        """
        self.sink = sink
        self.path = path
        self._db = _connect(path)

    def take(self, limit: int, max_bytes: int) -> list[Spooled]:
        """The oldest records waiting for this sink: up to ``limit`` of them and, beyond the
        first, no more than ``max_bytes`` of JSON together.

        Raises:
            StoreError: the file cannot be read.
        """
        rows: list[Spooled] = []
        size = 0
        try:
            cursor = self._db.execute(
                "SELECT id, sink, key, envelope, device, kind, text FROM spool WHERE sink = ? "
                "ORDER BY id LIMIT ?",
                (self.sink, limit),
            )
            for row in cursor:
                size += len(row[6])
                if rows and size > max_bytes:
                    break
                rows.append(Spooled(*row))
            cursor.close()
        except sqlite3.Error as exc:
            raise StoreError(f"bridge state {self.path}: {exc}") from exc
        return rows

    def done(self, rows: Sequence[Spooled], *, reason: str | None = None) -> list[str]:
        """Settle ``rows``: taken by the sink, or (with ``reason``) refused for good and kept as
        dead letters. Return the envelopes no sink holds any more.

        Raises:
            StoreError: the disk refused it.
        """
        ids = [(r.id,) for r in rows]
        envelopes = sorted({r.envelope for r in rows})
        now = int(time.time() * 1000)
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if reason is not None:
                    self._db.executemany(
                        "INSERT INTO dead (sink, key, envelope, device, kind, text, reason, "
                        "at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (r.sink, r.key, r.envelope, r.device, r.kind, r.text, reason, now)
                            for r in rows
                        ],
                    )
                self._db.executemany("DELETE FROM spool WHERE id = ?", ids)
                settled = [
                    e
                    for e in envelopes
                    if self._db.execute(
                        "SELECT 1 FROM spool WHERE envelope = ? LIMIT 1", (e,)
                    ).fetchone()
                    is None
                ]
        except sqlite3.Error as exc:
            raise StoreError(f"bridge state {self.path}: {exc}") from exc
        return settled

    def close(self) -> None:
        """Close this thread's connection."""
        self._db.close()
