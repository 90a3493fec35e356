"""Confined failures: each is counted, and logged at most once per interval with the count."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

LOG_EVERY_S = 10.0


class FaultLog:
    """Counts one kind of confined failure and logs it, rate-limited, with the running total.

    The first failure is logged at once; later ones at most once per ``every_s``, so a frame
    that fails a million times costs a counter, not a full disk of log lines. Safe from any
    thread (the lock is only taken on the failure path).
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.count = 0
        self.last = ""
        self._logger = logger
        self._level = level
        self._every_s = every_s
        self._clock = clock
        self._next_s = -1.0
        self._since = 0
        self._lock = threading.Lock()

    def record(self, problem: object) -> None:
        """Count one failure; log it unless a line was written less than ``every_s`` ago."""
        with self._lock:
            self.count += 1
            self._since += 1
            self.last = str(problem)
            now = self._clock()
            if now < self._next_s:
                return
            since, self._since = self._since, 0
            self._next_s = now + self._every_s
            total = self.count
        self._logger.log(
            self._level,
            "%s: %s (%d time(s) since the last line, %d in all)",
            self.what,
            problem,
            since,
            total,
        )
