"""Retry with exponential back-off and jitter (tenacity) until it works or a stop event is set."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

T = TypeVar("T")


class StoppedError(Exception):
    """The stop event was set while retrying: the caller is shutting down."""


def retry_until_stopped(
    attempt: Callable[[], T],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    stop: threading.Event,
    initial_s: float,
    max_s: float,
    jitter_s: float,
    on_retry: Callable[[BaseException | None, float], None],
    interrupt: Callable[[], bool] | None = None,
    poll_s: float = 0.5,
) -> T:
    """Call ``attempt`` until it returns; wait ``initial_s``, doubling up to ``max_s``, plus up
    to ``jitter_s`` at random, after each failure of type ``retry_on`` (``on_retry(error,
    wait)`` is told first). Other exceptions propagate at once.

    With ``interrupt``, a wait is checked every ``poll_s`` and ends early (the next attempt is
    made at once) when ``interrupt()`` is true: e.g. the peer has just become reachable again,
    so a long back-off does not keep the caller waiting at its cap.

    Raises:
        StoppedError: ``stop`` was set before an attempt or during a wait.
    """

    def sleep(seconds: float) -> None:
        if interrupt is None:
            if stop.wait(seconds):
                raise StoppedError
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stop.wait(min(poll_s, left)):
                raise StoppedError
            if interrupt():
                return

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        on_retry(error, state.next_action.sleep if state.next_action else 0.0)

    def guarded() -> T:
        if stop.is_set():
            raise StoppedError
        return attempt()

    retrying = Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=initial_s, min=initial_s, max=max_s)
        + wait_random(0, jitter_s),
        sleep=sleep,
        before_sleep=note,
        reraise=True,
    )
    return retrying(guarded)
