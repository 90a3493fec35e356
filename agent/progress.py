"""How far each log replay has got: frames read of the log's total, and whether it has ended.

The total is counted once, on a low-key thread of its own that reads the log a second time, so
that the replay itself starts at once and its loop carries no extra work; until the count is
done (or when it fails) the total is unknown and only the frames read are shown.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from canvoy.agent.ingest import Channel
from canvoy.agent.source import ReplayStats, read_log

log = logging.getLogger(__name__)


class ReplayProgress:
    """Totals of the replayed logs, and each replay's progress against its total."""

    def __init__(self, channels: list[Channel]) -> None:
        self._channels = [c for c in channels if c.replay is not None]
        self.totals: dict[str, int] = {}  # bus name -> frames in its log, once counted
        self._thread = threading.Thread(target=self._count, name="replay-count", daemon=True)

    def start(self) -> None:
        """Start counting (nothing to do without a replay)."""
        if self._channels:
            self._thread.start()

    def _count(self) -> None:
        for channel in self._channels:
            path = channel.config.replay
            assert path is not None
            try:
                stats = ReplayStats()
                for _msg in read_log(Path(path), stats):
                    pass
            except Exception as exc:  # the count is a nicety: the replay reports its own errors
                log.debug("bus %s: frames of %s not counted: %s", channel.config.name, path, exc)
                continue
            self.totals[channel.config.name] = stats.frames

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per replayed bus: ``frames`` read, ``total`` (None: not counted yet), ``percent``
        of this pass, ``loop`` and ``ended``."""
        out: dict[str, dict[str, Any]] = {}
        for channel in self._channels:
            assert channel.replay is not None
            name = channel.config.name
            frames = channel.replay.frames
            total = self.totals.get(name)
            ended = channel.thread is not None and not channel.thread.is_alive()
            percent = None
            if total:
                done = frames % total if channel.config.loop and not ended else frames
                percent = 100.0 if ended else round(100.0 * min(done, total) / total, 1)
            out[name] = {
                "log": str(channel.config.replay),
                "frames": frames,
                "total": total,
                "percent": percent,
                "loop": channel.config.loop,
                "ended": ended,
            }
        return out
