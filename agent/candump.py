"""candump text from a stream (standard input): ``candump -L`` lines and candump's own output.

``candump -L`` (and ``-l`` files) go through python-can's ``CanutilsLogReader``; candump's screen
format (``  can0  123   [8]  11 22 ...``, with or without ``-t`` timestamps) through cantools'
log parser, which knows it. The first line that either understands fixes the format.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import time
from collections.abc import Iterable, Iterator

import can
from cantools.logreader import DataFrame, Parser

from canvoy.agent.source import ReplayStats, read_candump_lines
from canvoy.errors import DecodeError

log = logging.getLogger(__name__)

EXPECTED = (
    "expected candump -L lines such as '(1700000000.000000) can0 123#1122' "
    "or candump's own output such as 'can0  123   [2]  11 22'"
)


def read_stream(
    lines: Iterable[str], stats: ReplayStats, name: str = "standard input"
) -> Iterator[can.Message]:
    """Every frame of candump text in ``lines``, in order; lines neither format reads are
    counted in ``stats.bad_lines`` and skipped.

    Raises:
        DecodeError: the stream ended without one readable frame.
    """
    first = stats.frames
    rest = iter(lines)
    for line in rest:
        if not line.strip():
            continue
        if _is_candump_log(line):
            yield from read_candump_lines(itertools.chain([line], rest), stats, name)
            break
        if _screen_frame(Parser(), line) is not None:
            yield from _read_screen(itertools.chain([line], rest), stats, name)
            break
        stats.bad_lines += 1
        log.debug("%s: line skipped, neither candump format: %r", name, line[:80])
    if stats.frames == first:
        why = f"{stats.bad_lines} line(s) not understood" if stats.bad_lines else "it was empty"
        raise DecodeError(f"{name} has no readable frame ({why}): {EXPECTED}")


def _is_candump_log(line: str) -> bool:
    """True when python-can's candump -L reader reads ``line``."""
    try:
        next(iter(can.io.CanutilsLogReader([line])))  # type: ignore[arg-type]
    except Exception:  # the reader raises whatever its split and int() raise
        return False
    return True


def _read_screen(lines: Iterable[str], stats: ReplayStats, name: str) -> Iterator[can.Message]:
    parser = Parser()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        frame = _screen_frame(parser, line)
        if frame is None:
            stats.bad_lines += 1
            log.debug("%s line %d skipped: %r", name, number, line[:80])
            continue
        stats.frames += 1
        yield _message(frame)


def _screen_frame(parser: Parser, line: str) -> DataFrame | None:
    """The frame cantools' parser reads from ``line``, or None."""
    try:
        return parser.parse(line.strip("\r\n"))
    except ValueError:  # a pattern matched but its hex or time did not convert
        return None


def _message(frame: DataFrame) -> can.Message:
    stamp = frame.timestamp
    if isinstance(stamp, dt.datetime):
        seconds = stamp.timestamp()
    elif isinstance(stamp, dt.timedelta):
        seconds = stamp.total_seconds()
    else:  # candump without -t: the frame is as old as the moment it arrived here
        seconds = time.time()
    return can.Message(
        timestamp=seconds,
        arbitration_id=frame.frame_id & 0x1FFFFFFF,
        is_extended_id=frame.is_extended_frame,
        is_remote_frame=frame.is_remote_frame,
        is_fd=len(frame.data) > 8,
        data=frame.data,
        channel=frame.channel,
    )
