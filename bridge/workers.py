"""Verification in worker processes, so that ECDSA, decompression, parsing and JSON encoding
run on other cores than the MQTT network thread.

The main process keeps what must be shared (device keys learned from births, the replay window,
acknowledgements); a worker gets ``(topic, payload, device key)`` and returns either the verified
envelope with its records (JSON already encoded) or the rejection reason.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.bridge.records import Record, records
from canvoy.bridge.verify import Parsed, Verified, check_envelope
from canvoy.wire import body
from canvoy.wire.errors import EnvelopeError

# topic, payload, the device's trusted public keys (SEC1, uncompressed; two during a renewal)
Job = tuple[str, bytes, tuple[bytes, ...]]
PARENT_CHECK_S = 1.0
_KEYS: dict[bytes, ec.EllipticCurvePublicKey] = {}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A worker's answer for one message: ``verified`` and ``records``, or ``reason``."""

    verified: Verified | None = None
    records: tuple[Record, ...] = ()
    reason: str = ""
    detail: str = ""


def public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The SEC1 form a worker loads the key from."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def _key(sec1: bytes) -> ec.EllipticCurvePublicKey:
    key = _KEYS.get(sec1)
    if key is None:
        key = _KEYS[sec1] = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sec1)
    return key


def _light(record: Record) -> Record:
    # The cached JSON; sinks send only this.
    return Record.from_text(record.key, record.device, record.kind, record.text)


def verify_jobs(jobs: Sequence[Job]) -> list[Outcome]:
    """Run in a worker: verify each job with its key; never raises for a bad message."""
    out = []
    for topic, payload, sec1s in jobs:
        keys = [_key(sec1) for sec1 in sec1s]

        def keys_for(
            _device: str, _parsed: Parsed, keys: list[ec.EllipticCurvePublicKey] = keys
        ) -> list[ec.EllipticCurvePublicKey]:
            return keys

        try:
            verified = check_envelope(topic, payload, keys_for)
            # Encode the JSON here, and send back only what the main process still needs: the
            # records' text, and the parsed body only where tickets read it (events).
            recs = tuple(_light(r) for r in records(verified))
            if isinstance(verified.parsed, body.Telemetry):
                verified = replace(
                    verified, content={}, parsed=body.Telemetry(policy=verified.parsed.policy)
                )
            out.append(Outcome(verified=verified, records=recs))
        except EnvelopeError as exc:
            out.append(Outcome(reason=exc.reason, detail=str(exc)))
        except Exception as exc:  # whatever arrives, the worker answers
            out.append(Outcome(reason="internal", detail=f"{type(exc).__name__}: {exc}"))
    return out


def _watch_parent(parent: int) -> None:
    """Run in each worker: exit as soon as the bridge process is gone, however it died."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class VerifyPool:
    """A pool of worker processes (spawned: the bridge has threads, so no fork)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_watch_parent,
            initargs=(os.getpid(),),
        )
        pool.submit(int).result()  # start one now, not on the first message
        return pool

    def restart(self) -> None:
        """Replace a broken pool (a worker was killed) with a new one."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._start()

    def verify(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Verify ``jobs`` across the workers, results in order.

        Raises:
            Exception: whatever the pool raises (a worker died, a result did not pickle); the
                caller verifies those messages itself, one at a time.
        """
        if not jobs:
            return []
        size = max(1, -(-len(jobs) // self.workers))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        results: list[Outcome] = []
        for part in self._pool.map(verify_jobs, chunks):
            results.extend(part)
        return results

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)
