"""Verification in worker processes, so that ECDSA, decompression, parsing and JSON encoding
run on other cores than the MQTT network thread.

The main process keeps what must be shared (device keys learned from births, the replay window,
acknowledgements); a worker gets ``(topic, payload, device key)`` and returns either the verified
envelope with its records (JSON already encoded) or the rejection reason.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.bridge.records import Record, records
from canvoy.bridge.verify import Parsed, Verified, check_envelope
from canvoy.wire import body
from canvoy.wire.errors import EnvelopeError, MalformedError

Job = tuple[str, bytes, bytes]  # topic, payload, device public key (SEC1, uncompressed)
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
    light = Record(record.key, record.device, record.kind, {})
    light.__dict__["text"] = record.text  # the cached JSON; sinks send only this
    return light


def verify_jobs(jobs: Sequence[Job]) -> list[Outcome]:
    """Run in a worker: verify each job with its key; never raises for a bad message."""
    out = []
    for topic, payload, sec1 in jobs:
        key = _key(sec1)

        def key_for(
            _device: str, _parsed: Parsed, key: ec.EllipticCurvePublicKey = key
        ) -> ec.EllipticCurvePublicKey:
            return key

        try:
            verified = check_envelope(topic, payload, key_for)
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
            out.append(Outcome(reason=MalformedError.reason, detail=f"{type(exc).__name__}: {exc}"))
    return out


class VerifyPool:
    """A pool of worker processes (spawned: the bridge has threads, so no fork)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        )
        self._pool.submit(int).result()  # start them now, not on the first message

    def verify(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Verify ``jobs`` across the workers, results in order."""
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
