"""Verified envelopes as JSON records for sinks, each with its idempotency key."""

from __future__ import annotations

import json
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
        """The record as one line of JSON (encoded once, whatever number of sinks)."""
        return json.dumps(self.data, separators=(",", ":"), default=str)

    def json(self) -> str:
        """The record as one line of JSON."""
        return self.text


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
    data = {
        **head,
        "key": e.key,
        "state": status.state,
        "agent": status.agent,
        "policy": status.policy,
        "outbox": status.outbox_depth,
    }
    return [Record(e.key, e.device, e.kind, data)]
