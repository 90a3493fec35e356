"""Stop a long-running command cleanly on SIGTERM or Ctrl-C; reload its files on SIGHUP."""

from __future__ import annotations

import signal
from collections.abc import Callable


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (the service loop then shuts down in order)."""

    def handler(_signum: int, _frame: object) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def reload_on_hangup(reload: Callable[[], None]) -> None:
    """Call ``reload`` on SIGHUP (where the platform has it), as daemons re-read their files."""
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        return

    def handler(_signum: int, _frame: object) -> None:
        reload()

    signal.signal(hangup, handler)
