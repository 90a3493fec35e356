"""The quarantine log: every rejected message as one JSON line, chained by hashes.

Each line carries ``prev``, the SHA-256 of the previous line, so a removed or edited line breaks
the chain (``verify_chain``). Payloads are stored only as their hash and size, except where the
bridge's own code failed on a message (reason ``internal``): then the payload is kept (base64),
so that the failure can be reproduced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

GENESIS = "0" * 64


class Quarantine:
    """Appends rejections to a JSON Lines file and counts them by reason. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = GENESIS
        if path.exists() and path.stat().st_size:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - 64 * 1024))
                last = f.read().splitlines()[-1]
            self._prev = hashlib.sha256(last).hexdigest()

    def add(
        self, topic: str, reason: str, detail: str, payload: bytes, *, keep_payload: bool = False
    ) -> None:
        """Record one rejected message (with its payload when ``keep_payload``).

        Raises:
            OSError: the log cannot be written.
        """
        with self._lock:
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "topic": topic,
                "reason": reason,
                "detail": detail[:500],
                "payload_sha256": hashlib.sha256(payload).hexdigest(),
                "bytes": len(payload),
                "prev": self._prev,
            }
            if keep_payload:
                entry["payload_b64"] = base64.b64encode(payload).decode()
            line = json.dumps(entry, separators=(",", ":")).encode()
            with self.path.open("ab") as out:
                out.write(line + b"\n")
                out.flush()
                os.fsync(out.fileno())
            self._prev = hashlib.sha256(line).hexdigest()
            self.counts[reason] += 1


def verify_chain(path: Path) -> int:
    """Check every line's ``prev``; return the number of lines.

    Raises:
        ValueError: naming the first line whose chain is broken.
    """
    prev = GENESIS
    count = 0
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if json.loads(line)["prev"] != prev:
            raise ValueError(f"{path}:{number}: hash chain broken (a line was changed or removed)")
        prev = hashlib.sha256(line).hexdigest()
        count += 1
    return count
