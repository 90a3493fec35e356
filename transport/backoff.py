"""Retry with exponential back-off and jitter (tenacity) until it works or a stop event is set."""

from __future__ import annotations

import threading
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
) -> T:
    """Call ``attempt`` until it returns; wait ``initial_s``, doubling up to ``max_s``, plus up
    to ``jitter_s`` at random, after each failure of type ``retry_on`` (``on_retry(error,
    wait)`` is told first). Other exceptions propagate at once.

    Raises:
        StoppedError: ``stop`` was set before an attempt or during a wait.
    """

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise StoppedError

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
