"""Received messages through verification, the replay window and routing, one at a time.

For a batch of messages the pipeline says what to write to the state file (admitted sequence
numbers, status times, a row per record per routed sink, dead letters) and which messages to
acknowledge. Every message's failure stays with that message: it is quarantined with its reason
and acknowledged (``internal`` when the bridge's own code failed on it, with the payload kept).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from canvoy.bridge.config import BridgeConfig
from canvoy.bridge.quarantine import Quarantine
from canvoy.bridge.records import Record, records
from canvoy.bridge.tickets import Ticketing
from canvoy.bridge.verify import StatusOrder, Verified, Verifier, status_order
from canvoy.bridge.workers import Job, Outcome, VerifyPool, public_bytes
from canvoy.transport.mqtt import Connection, Message
from canvoy.wire import body
from canvoy.wire.errors import DuplicateError, EnvelopeError, ReplayError, UnknownDeviceError
from canvoy.wire.keys import DeviceKey

log = logging.getLogger(__name__)
MAX_RECORD_BYTES = 2 * 1024 * 1024  # the largest JSON record a sink is given (PROTOCOL.md)
Received = tuple[Connection, Message]
_Authentic = tuple[Received, Verified, list[Record] | None]
T = TypeVar("T")


@dataclass(slots=True)
class Batch:
    """What one batch of messages comes to: the state to write, then the messages to ack."""

    admitted: list[tuple[str, bytes, int]] = field(default_factory=list)
    statuses: list[tuple[str, StatusOrder]] = field(default_factory=list)
    certs: list[tuple[str, str]] = field(default_factory=list)
    spooled: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    dead: list[tuple[str, str, str, str, str, str, str]] = field(default_factory=list)
    acks: list[Received] = field(default_factory=list)
    forwarded: list[Verified] = field(default_factory=list)
    # Envelopes forwarded before (a duplicate, or a replay kept in the quarantine log): to be
    # confirmed again once no sink holds them, because their device has not seen it.
    confirm: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Held:
    received: Received
    until: float


class Pipeline:
    """Verification, admission and routing for the bridge's main thread."""

    def __init__(
        self,
        config: BridgeConfig,
        verifier: Verifier,
        quarantine: Quarantine,
        pool: VerifyPool | None,
        stats: Counter[str],
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.keys = verifier.keys
        self.quarantine = quarantine
        self.pool = pool
        self.stats = stats
        self.ticketing = Ticketing(config.service_rules)
        self.routes = {kind: list(names) for kind, names in config.routes.items()}
        self.held: list[_Held] = []
        self._sec1: dict[str, bytes] = {}

    # -- one batch ---------------------------------------------------------------------------

    def process(self, batch: Sequence[Received]) -> Batch:
        """Verify, admit and route ``batch``; never raises for a message."""
        out = Batch()
        self.stats["received"] += len(batch)
        for received, verified, recs in self._verified(batch, out):
            self._confined(received, out, partial(self._route, received, verified, recs, out))
        return out

    def recheck_held(self) -> Batch:
        """Messages of devices whose birth has now arrived, or whose hold has expired."""
        out = Batch()
        if not self.held:
            return out
        now = time.monotonic()
        ready: list[_Held] = []
        waiting: list[_Held] = []
        for h in self.held:
            known = self.keys.get(_device_of(h.received[1].topic)) is not None
            (ready if known or now >= h.until else waiting).append(h)
        self.held = waiting
        for h in ready:
            got = self._confined(h.received, out, partial(self._verify_here, h.received, out, True))
            if got is not None:
                received, verified, recs = got
                self._confined(received, out, partial(self._route, received, verified, recs, out))
        return out

    def _may_hold(self, msg: Message) -> bool:
        """Held messages are unacknowledged, so they count against ``receive_maximum``: hold at
        most half of it, and a tenth per device, so that one device (its key stolen, its
        signatures junk) cannot stall the rest of the fleet."""
        limit = max(1, self.config.receive_maximum // 2)
        per_device = max(1, self.config.receive_maximum // 10)
        if len(self.held) >= limit:
            return False
        device = _device_of(msg.topic)
        held = sum(1 for h in self.held if _device_of(h.received[1].topic) == device)
        return held < per_device

    def _verified(self, batch: Sequence[Received], out: Batch) -> list[_Authentic]:
        """Each authentic message with its records (None: encode them here)."""
        done: list[_Authentic] = []
        jobs: list[Job] = []
        owners: list[Received] = []
        for received in batch:
            msg = received[1]
            parts = msg.topic.split("/")
            known = (
                self.keys.all(parts[2])
                if self.pool is not None and len(parts) == 4 and parts[3] in ("telemetry", "events")
                else ()
            )
            if not known:  # a birth, an unknown device, a strange topic: here
                got = self._confined(received, out, partial(self._verify_here, received, out))
                if got is not None:
                    done.append(got)
                continue
            jobs.append((msg.topic, bytes(msg.payload), tuple(self._sec1_of(k) for k in known)))
            owners.append(received)
        for received, outcome in zip(owners, self._in_workers(jobs), strict=True):
            if outcome is None:  # the pool failed on this chunk: verify it here instead
                got = self._confined(received, out, partial(self._verify_here, received, out))
                if got is not None:
                    done.append(got)
            elif outcome.verified is None:
                self._reject(received, out, outcome.reason, outcome.detail)
            else:
                done.append((received, outcome.verified, list(outcome.records)))
        return done

    def _sec1_of(self, key: DeviceKey) -> bytes:
        sec1 = self._sec1.get(key.fingerprint)
        if sec1 is None:
            sec1 = self._sec1[key.fingerprint] = public_bytes(key.key)
        return sec1

    def _in_workers(self, jobs: list[Job]) -> list[Outcome | None]:
        if not jobs or self.pool is None:
            return []
        try:
            return list(self.pool.verify(jobs))
        except Exception as exc:  # a worker died, or a result did not travel back
            log.error("verify workers failed on %d message(s) (%s); verifying here", len(jobs), exc)
            self.stats["worker_failures"] += 1
            self.pool.restart()
            return [None] * len(jobs)

    def _verify_here(self, received: Received, out: Batch, held: bool = False) -> _Authentic | None:
        msg = received[1]
        try:
            verified = self.verifier.check(msg.topic, bytes(msg.payload), admit=False)
        except UnknownDeviceError as exc:
            if exc.reason == "unknown_device" and not held and self._may_hold(msg):
                until = time.monotonic() + self.config.hold_unknown_s
                self.held.append(_Held(received, until))
                self.stats["held"] += 1
                return None
            self._reject(received, out, exc.reason, str(exc))
            return None
        except DuplicateError as exc:  # a status that is not newer: changes nothing
            self._duplicate(received, out, exc)
            return None
        except EnvelopeError as exc:
            self._reject(received, out, exc.reason, str(exc))
            return None
        if isinstance(verified.parsed, body.Status):
            e = verified.signed.envelope
            out.statuses.append((e.device, status_order(e.created_ms, verified.parsed)))
            out.certs.append((e.device, verified.parsed.cert_pem))
        return received, verified, None

    # -- admission and routing ---------------------------------------------------------------

    def _route(
        self, received: Received, verified: Verified, recs: list[Record] | None, out: Batch
    ) -> None:
        e = verified.signed.envelope
        try:
            self.verifier.admit(verified)
        except DuplicateError as exc:
            self._duplicate(received, out, exc)
            out.confirm.append(e.key)
            return
        except ReplayError as exc:
            # Authentic but too far behind to tell from a copy: kept whole in the quarantine
            # log (a dead letter) and confirmed, or its device would publish it for ever.
            self._reject(received, out, exc.reason, str(exc), keep_payload=True)
            out.confirm.append(e.key)
            return
        except EnvelopeError as exc:
            self._reject(received, out, exc.reason, str(exc))
            return
        if recs is None:
            recs = records(verified)
        by_kind: dict[str, list[Record]] = {e.kind: recs}
        if "tickets" in self.routes and e.kind == "events":
            by_kind["tickets"] = self.ticketing.tickets(verified)
            self.stats["tickets"] += len(by_kind["tickets"])
        rows, dead = [], []
        for kind, chosen in by_kind.items():
            for sink in self.routes.get(kind, ()):
                for r in chosen:
                    row = (sink, r.key, e.key, r.device, r.kind, r.text)
                    if len(r.text) > MAX_RECORD_BYTES:
                        reason = f"record_too_large: {len(r.text)} bytes > {MAX_RECORD_BYTES}"
                        dead.append((*row, reason))
                    else:
                        rows.append(row)
        # Only now, with every record encoded, does the message count as admitted.
        if e.kind != "status":
            out.admitted.append((e.device, e.boot, e.seq))
        out.spooled.extend(rows)
        out.dead.extend(dead)
        out.acks.append(received)
        out.forwarded.append(verified)
        self.stats["verified"] += 1

    def reject_internal(self, received: Received, detail: str) -> None:
        """Quarantine ``received`` as the bridge's own failure (payload kept); ack it after."""
        self._reject(received, Batch(), "internal", detail, keep_payload=True)

    def forget(self, batch: Batch) -> None:
        """Undo the replay window's admissions of a batch whose state could not be written."""
        for device, boot, seq in batch.admitted:
            self.verifier.window.forget(device, boot, seq)

    # -- outcomes ----------------------------------------------------------------------------

    def _confined(self, received: Received, out: Batch, step: Callable[[], T]) -> T | None:
        try:
            return step()
        except Exception as exc:  # the bridge's own failure, on this message alone
            log.exception("internal error on a message on %s", received[1].topic)
            detail = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._reject(received, out, "internal", detail, keep_payload=True)
            return None

    def _duplicate(self, received: Received, out: Batch, exc: DuplicateError) -> None:
        # Counted, not an error; noted in the quarantine log, which lists everything that
        # arrived and was not forwarded.
        self.stats["duplicates"] += 1
        msg = received[1]
        self._note(msg, exc.reason, str(exc), keep_payload=False)
        out.acks.append(received)

    def _reject(
        self,
        received: Received,
        out: Batch,
        reason: str,
        detail: str,
        *,
        keep_payload: bool = False,
    ) -> None:
        msg = received[1]
        self.stats[f"rejected_{reason}"] += 1
        log.warning("rejected %s (%s): %s", msg.topic, reason, detail[:300])
        self._note(msg, reason, detail, keep_payload=keep_payload)
        out.acks.append(received)

    def _note(self, msg: Message, reason: str, detail: str, *, keep_payload: bool) -> None:
        try:
            self.quarantine.add(
                msg.topic, reason, detail, bytes(msg.payload), keep_payload=keep_payload
            )
        except OSError as exc:
            self.stats["quarantine_failures"] += 1
            log.error("quarantine log %s not written: %s", self.quarantine.path, exc)


def _device_of(topic: str) -> str:
    """The device segment of ``canvoy/v1/<device>/<kind>`` ("" for any other shape)."""
    parts = topic.split("/")
    return parts[2] if len(parts) == 4 else ""
