"""How far each log replay has got: frames read of the log's total, and whether it has ended.

The total is counted once, on a thread of its own, so that the replay starts at once and its
loop carries no extra work. A candump log is counted by its lines (fast). Another format is
read a second time only when the replay is paced (realtime or xN, mostly asleep): at full speed
a second reader would take a quarter of the replay's time (docs/PERFORMANCE.md), so there the
total stays unknown and only the frames read are shown.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from canvoy.agent.ingest import Channel
from canvoy.agent.source import ReplayStats, read_log

log = logging.getLogger(__name__)


def _count(path: Path, *, paced: bool) -> int | None:
    """Frames in the log at ``path`` (None: not counted, see the module's docstring)."""
    if path.suffix.lower() == ".log":  # candump -l: one frame per line
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if not paced:
        return None
    stats = ReplayStats()
    for _msg in read_log(path, stats):
        pass
    return stats.frames


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
                total = _count(Path(path), paced=channel.config.speed != "max")
            except Exception as exc:  # the count is a nicety: the replay reports its own errors
                log.debug("bus %s: frames of %s not counted: %s", channel.config.name, path, exc)
                continue
            if total is not None:
                self.totals[channel.config.name] = total

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
