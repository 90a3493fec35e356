"""The outbox's table of open fault episodes, written inside the outbox's own transactions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from canvoy.agent.episodes import Change, Episode

EPISODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL
);
"""


def store_changes(db: sqlite3.Connection, changes: Sequence[Change], seq: int) -> None:
    """Open, change or close episodes inside the open transaction of the envelope ``seq``."""
    for change in changes:
        e = change.episode
        if change.state == "clear":
            db.execute("DELETE FROM episodes WHERE id = ?", (e.id,))
        else:
            db.execute(
                "INSERT INTO episodes (id, source, scope, key, code, detail, opened_ms, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "code = excluded.code, detail = excluded.detail",
                (e.id, e.source, e.scope, e.key, e.code, json.dumps(e.detail), e.opened_ms, seq),
            )


def read_episodes(db: sqlite3.Connection) -> list[Episode]:
    """Every stored episode, in the order they were opened."""
    rows = db.execute(
        "SELECT id, source, scope, key, code, detail, opened_ms FROM episodes ORDER BY seq"
    ).fetchall()
    return [
        Episode(
            id=i,
            source=source,
            scope=scope,
            key=key,
            code=code,
            detail=tuple(json.loads(detail)),
            opened_ms=opened,
        )
        for i, source, scope, key, code, detail, opened in rows
    ]
