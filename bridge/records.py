"""Verified envelopes as JSON records for sinks, each with its idempotency key."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from canvoy.bridge.verify import Verified
from canvoy.wire import body
from canvoy.wire.events import to_map


@dataclass(frozen=True)
class Record:
    """One thing to forward: a telemetry batch, one event, or a status change."""

    key: str  # device:boot:seq, plus :index for the events of one envelope
    device: str
    kind: str
    data: dict[str, Any]

    @cached_property
    def text(self) -> str:
        """The record as one line of JSON (encoded once, whatever number of sinks).

        Strict JSON: NaN and the infinities (an IEEE float signal can decode to them) become
        ``null``, which every JSON parser reads.
        """
        try:
            return json.dumps(self.data, separators=(",", ":"), default=str, allow_nan=False)
        except ValueError:
            return json.dumps(_finite(self.data), separators=(",", ":"), default=str)

    def json(self) -> str:
        """The record as one line of JSON."""
        return self.text

    @classmethod
    def from_text(cls, key: str, device: str, kind: str, text: str) -> Record:
        """A record whose JSON is already encoded (from a worker, or the bridge's spool)."""
        record = cls(key, device, kind, {})
        record.__dict__["text"] = text
        return record


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (bodies nest at most 8 deep)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def split(record: Record, limit: int) -> list[Record]:
    """``record`` as records of at most ``limit`` bytes of JSON each (docs/PROTOCOL.md).

    A telemetry record is cut by series, and a series that is too large alone by time; each
    part keeps the head (device, boot, seq, envelope, digest, policy) and says which part of how
    many it is, under the key ``<key>#<part>``. Another kind of record that is too large, or a
    single sample that is, comes back unsplit: the sink refuses it.
    """
    if len(record.text) <= limit or record.kind != "telemetry":
        return [record]
    data = json.loads(record.text)
    series: dict[str, dict[str, list[Any]]] = data.pop("series", {})
    head_bytes = len(json.dumps(data, separators=(",", ":"))) + 64
    budget = limit - head_bytes
    pieces: list[tuple[str, dict[str, list[Any]]]] = []
    for name, column in series.items():
        pieces.extend(_cut(name, column, budget))
    groups: list[dict[str, dict[str, list[Any]]]] = [{}]
    used = 0
    for name, column in pieces:
        size = len(json.dumps({name: column}, separators=(",", ":")))
        if groups[-1] and used + size > budget:
            groups.append({})
            used = 0
        groups[-1].setdefault(name, {"t_ms": [], "v": []})
        groups[-1][name]["t_ms"] += column["t_ms"]
        groups[-1][name]["v"] += column["v"]
        used += size
    parts = []
    for i, group in enumerate(groups, 1):
        samples = sum(len(c["v"]) for c in group.values())
        part = {**data, "key": f"{record.key}#{i}", "part": i, "parts": len(groups)}
        part.update(samples=samples, series=group)
        parts.append(Record(f"{record.key}#{i}", record.device, record.kind, part))
    return parts


def _cut(
    name: str, column: dict[str, list[Any]], budget: int
) -> list[tuple[str, dict[str, list[Any]]]]:
    """One series in pieces whose JSON fits ``budget`` (halving by time)."""
    size = len(json.dumps({name: column}, separators=(",", ":")))
    count = len(column["v"])
    if size <= budget or count <= 1:
        return [(name, column)]
    half = count // 2
    first = {"t_ms": column["t_ms"][:half], "v": column["v"][:half]}
    second = {"t_ms": column["t_ms"][half:], "v": column["v"][half:]}
    return _cut(name, first, budget) + _cut(name, second, budget)


def records(verified: Verified) -> list[Record]:
    """The records of one verified envelope."""
    e = verified.signed.envelope
    head: dict[str, Any] = {
        "device": e.device,
        "boot": e.boot.hex(),
        "seq": e.seq,
        "kind": e.kind,
        "created_ms": e.created_ms,
        "envelope": e.key,
        "digest": verified.signed.digest,
    }
    parsed = verified.parsed
    if isinstance(parsed, body.Telemetry):
        batch = parsed
        series = {s.key: {"t_ms": list(s.times_ms), "v": list(s.values)} for s in batch.series}
        data = {
            **head,
            "key": e.key,
            "policy": batch.policy,
            "samples": batch.samples,
            "series": series,
        }
        return [Record(e.key, e.device, e.kind, data)]
    if isinstance(parsed, list):
        out = []
        for i, event in enumerate(parsed):
            key = f"{e.key}:{i}"
            data = {**head, "key": key, "event": to_map(event)}
            out.append(Record(key, e.device, e.kind, data))
        return out
    status = parsed
    # Every status of a boot has seq 0: its time and state tell one from another (a birth, its
    # heartbeats and the last will), so that no sink drops a later one as a repeat.
    key = f"{e.key}:{e.created_ms}:{status.state}"
    data = {
        **head,
        "key": key,
        "state": status.state,
        "agent": status.agent,
        "policy": status.policy,
        "outbox": status.outbox_depth,
        "connected_ms": status.connected_ms,
        "heartbeat_s": status.heartbeat_s,
        "overdue": status.overdue,
        "lost": status.lost,
    }
    return [Record(key, e.device, e.kind, data)]
