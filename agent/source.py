"""Where frames come from: live python-can buses (reopened when they fail) and log replay."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import can

from canvoy import mf4
from canvoy.agent.faults import FaultLog
from canvoy.errors import DecodeError
from canvoy.transport.backoff import StoppedError, retry_until_stopped

log = logging.getLogger(__name__)


def _quiet_line_warnings(record: logging.LogRecord) -> bool:
    """python-can's text readers warn once per line they cannot parse; a garbage file would
    print thousands. Those lines are shown with -vv only; the reader's result speaks for them."""
    return log.isEnabledFor(logging.DEBUG)


for _reader_log in ("can.io.trc", "can.io.asc", "can.io.csv", "can.io.canutils"):
    logging.getLogger(_reader_log).addFilter(_quiet_line_warnings)

# python-can readers by suffix; MF4 needs the optional 'canvoy[mf4]' extra (asammdf).
LOG_SUFFIXES = (".asc", ".blf", ".csv", ".db", ".log", ".mf4", ".trc", ".txt")


# What each suffix should hold, for the message about a file that does not.
FORMATS = {
    ".asc": "Vector ASC",
    ".blf": "Vector BLF",
    ".csv": "python-can CSV",
    ".db": "python-can SQLite",
    ".log": "candump -l",
    ".mf4": "ASAM MDF4",
    ".trc": "PEAK TRC",
    ".txt": "python-can text",
}


@dataclass(slots=True)
class ReplayStats:
    """What a replay read and what it could not."""

    frames: int = 0
    bad_lines: int = 0
    errors: list[str] = field(default_factory=list)
    on_warning: Callable[[str], None] | None = None  # told each line added to ``errors``


class _LineFile:
    """A text file, read line by line (undecodable bytes replaced)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("r", encoding="utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        return iter(self._file)

    def close(self) -> None:
        self._file.close()


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    return f"{FORMATS.get(suffix, suffix)} ({suffix})"


def _open_reader(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in LOG_SUFFIXES:
        raise DecodeError(
            f"log {str(path)!r} has an unknown format {suffix or '(none)'!r}: use one of "
            + ", ".join(LOG_SUFFIXES)
        )
    if suffix == ".mf4" and not mf4.load():
        raise DecodeError("reading MF4 needs asammdf: pip install 'canvoy[mf4]'")
    try:
        if suffix == ".asc":  # keep the recorded (absolute) times, as the other formats do
            return can.io.ASCReader(str(path), relative_timestamp=False)
        return can.LogReader(str(path))
    except OSError as exc:
        raise DecodeError(f"cannot open log {str(path)!r}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a reader's header parser raises anything (struct.error, ...)
        failure = DecodeError(
            f"{str(path)!r} is not a readable {_format(path)} file ({_reason(exc)}): "
            "check the file and its suffix"
        )
    if suffix == ".mf4":
        mf4.free_remains()  # out of the handler: the half-opened file can go now, quietly
    raise failure


def _reason(exc: BaseException) -> str:
    kind = type(exc)
    name = kind.__name__ if kind.__name__[0].isupper() else f"{kind.__module__}.{kind.__name__}"
    text = str(exc)
    return f"{name}: {text}" if text else name


def _offset(reader: Any) -> int | None:
    """How far into the file a reader got (its buffered position), if it can tell."""
    file = getattr(reader, "file", None)
    raw = getattr(file, "buffer", file)
    try:
        return int(raw.tell()) if raw is not None else None
    except (OSError, ValueError):
        return None


def _declared_size(reader: Any) -> int | None:
    """The file size a BLF header declares (0 or None when the writer never finished)."""
    size = getattr(reader, "file_size", None)
    return size if isinstance(size, int) and size > 0 else None


def _stopped(stats: ReplayStats, path: Path, how: str, offset: int | None, why: str) -> None:
    where = f" at byte {offset:,}" if offset is not None else ""
    text = f"{path.name}: {how} after {stats.frames:,} frames{where}{why}"
    stats.errors.append(text)
    if stats.on_warning is not None and stats.frames:
        stats.on_warning(text)


def _asc_ends(path: Path) -> bool:
    """True when an ASC file ends with its closing line (a cut file does not)."""
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 512))
        tail = file.read().rstrip().rsplit(b"\n", 1)[-1]
    return tail.strip().lower().startswith(b"end triggerblock")


def check_log(path: Path) -> None:
    """Make sure ``path`` holds at least one readable frame (read at start, not in a thread).

    Raises:
        DecodeError: the file is missing, of an unknown format, or has no readable frame.
    """
    for _msg in read_log(path):
        return


def read_log(path: Path, stats: ReplayStats | None = None) -> Iterator[can.Message]:
    """Every frame of a log file in recorded order, with recorded timestamps.

    A bad line in a candump log is counted in ``stats`` and skipped. In other formats a
    truncated or unreadable part ends the file early: what was read stays read, and one
    warning (in ``stats.errors`` and the log) says where reading stopped and after how many
    frames.

    Raises:
        DecodeError: the file is missing, of an unknown format, or has no readable frame.
    """
    stats = stats if stats is not None else ReplayStats()
    path = Path(path)
    if not path.is_file():
        raise DecodeError(_not_a_log(path))
    first = stats.frames
    if path.suffix.lower() == ".log":
        yield from _read_candump(path, stats)
    else:
        yield from _read_other(path, stats)
    if stats.frames == first:
        raise DecodeError(
            f"{str(path)!r} has no readable frame: expected a {_format(path)} log"
            + (f" ({stats.errors[-1]})" if stats.errors else "")
        )


def _not_a_log(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read as a log, and what to do."""
    if not path.exists():
        return f"log {str(path)!r} does not exist"
    if path.is_dir():
        return f"log {str(path)!r} is a directory: name a log file in it"
    return (
        f"log {str(path)!r} is not a regular file (a pipe or a device): "
        "send candump text to standard input and name the log '-'"
    )


def _read_other(path: Path, stats: ReplayStats) -> Iterator[can.Message]:
    reader = _open_reader(path)
    try:
        try:
            for msg in reader:
                stats.frames += 1
                yield msg
        except Exception as exc:  # a reader's parse error ends that file, not the caller
            _stopped(stats, path, "unreadable", _offset(reader), f": {_reason(exc)}")
            return
        declared, actual = _declared_size(reader), path.stat().st_size
        if declared is not None and actual < declared:
            _stopped(stats, path, "truncated", actual, f" (its header says {declared:,} bytes)")
        elif stats.frames and path.suffix.lower() == ".asc" and not _asc_ends(path):
            _stopped(stats, path, "truncated", actual, " (no 'End TriggerBlock' line)")
    finally:
        reader.stop()


def _read_candump(path: Path, stats: ReplayStats) -> Iterator[can.Message]:
    source = _LineFile(path)
    try:
        yield from read_candump_lines(source, stats, str(path))
    finally:
        source.close()


def read_candump_lines(
    lines: Iterable[str], stats: ReplayStats, name: str
) -> Iterator[can.Message]:
    """The frames of ``candump -L`` text (python-can's reader); bad lines are counted, skipped."""
    numbered = _Numbered(lines)
    while True:
        reader = can.io.CanutilsLogReader(numbered)  # type: ignore[arg-type]
        try:
            for msg in reader:
                stats.frames += 1
                yield msg
            return
        except Exception as exc:
            stats.bad_lines += 1
            log.debug("%s line %d skipped: %s", name, numbered.line, exc)


class _Numbered:
    """Lines that remember how many were read, so that a reader can resume after a bad one."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._lines:
            self.line += 1
            yield text

    def close(self) -> None:
        """Called by python-can's reader when it is done; the caller owns the lines."""


def replay_frames(path: Path, *, loop: bool, stats: ReplayStats) -> Iterator[can.Message]:
    """The frames of ``path``; with ``loop`` the file starts again at its end, with timestamps
    shifted so that time keeps moving forward.

    Raises:
        DecodeError: the file is missing or of an unknown format.
    """
    offset = 0.0
    while True:
        first = last = None
        for msg in read_log(path, stats):
            if first is None:
                first = msg.timestamp
            last = msg.timestamp
            if offset:
                msg.timestamp += offset
            yield msg
        if not loop or first is None or last is None:
            return
        offset += (last - first) + 0.001


Speed = Literal["max", "realtime"] | float


def parse_speed(text: str | float) -> Speed:
    """``max``, ``realtime`` or ``xN`` (N times real time); ``N`` and ``Nx`` mean ``xN`` too.

    Raises:
        ValueError: anything else, or a factor that is not a finite number > 0.
    """
    spelled = str(text).strip().lower()
    if spelled in ("max", "realtime"):
        return spelled  # type: ignore[return-value]
    number = spelled.removeprefix("x") if spelled.startswith("x") else spelled.removesuffix("x")
    try:
        factor = float(number)
    except ValueError:
        factor = 0.0
    if 0 < factor < math.inf:
        return factor
    raise ValueError(f"speed {str(text)!r} is invalid: use max, realtime or xN (e.g. x10)")


def paced(
    frames: Iterator[can.Message], speed: Speed, stop: threading.Event
) -> Iterator[can.Message]:
    """Yield frames at recorded pace (``realtime``), N times faster, or at once (``max``)."""
    if speed == "max":
        for msg in frames:
            if stop.is_set():
                return
            yield msg
        return
    factor = 1.0 if speed == "realtime" else float(speed)
    start_wall: float | None = None
    start_t = 0.0
    for msg in frames:
        if start_wall is None:
            start_wall, start_t = time.monotonic(), msg.timestamp
        delay = start_wall + (msg.timestamp - start_t) / factor - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        if stop.is_set():
            return
        yield msg


def open_bus(
    *,
    interface: str,
    channel: str,
    bitrate: int | None,
    fd: bool,
    filters: list[dict[str, int | bool]] | None,
    options: dict[str, Any],
) -> can.BusABC:
    """Open a python-can bus; ``options`` go to the backend unchanged.

    Raises:
        can.CanError: the interface cannot be opened (the supervisor retries).
    """
    kwargs: dict[str, Any] = dict(options)
    if bitrate is not None:
        kwargs["bitrate"] = bitrate
    if fd:
        kwargs["fd"] = True
    if filters:
        kwargs["can_filters"] = filters
    return can.Bus(interface=interface, channel=channel, **kwargs)


class BusSupervisor:
    """Keeps one live bus open and feeding its listener; reopens it with back-off on failure."""

    def __init__(
        self,
        name: str,
        listener: can.Listener,
        opener: Any,
        *,
        backoff_initial_s: float = 1.0,
        on_open: Callable[[can.BusABC, can.Notifier], Callable[[], None]] | None = None,
    ) -> None:
        """``on_open(bus, notifier)`` runs each time the bus opens (e.g. an OBD-II poller that
        talks through the same notifier); the function it returns runs before the bus closes."""
        self.name = name
        self._on_open = on_open
        self._backoff_initial_s = backoff_initial_s
        self.listener = listener
        self._opener = opener
        self._stop = threading.Event()
        self._failed = threading.Event()
        self.reopens = 0
        self.open_failures = 0
        self.listener_faults = FaultLog(log, f"bus {name}: a listener failed on a frame")
        self._bus: can.BusABC | None = None
        self._thread = threading.Thread(target=self._run, name=f"bus-{name}", daemon=True)

    def start(self) -> None:
        """Start opening and reading in the background."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading and close the bus."""
        self._stop.set()
        self._failed.set()
        self._thread.join(timeout_s)

    def _open(self) -> can.BusABC:
        """Open the bus, retrying with back-off.

        Raises:
            StoppedError: the supervisor was stopped first.
        """
        bus: can.BusABC = retry_until_stopped(
            self._opener,
            retry_on=(can.CanError, OSError, ValueError),
            stop=self._stop,
            initial_s=self._backoff_initial_s,
            max_s=60.0,
            jitter_s=self._backoff_initial_s,
            on_retry=self._note_failure,
        )
        return bus

    @property
    def bus(self) -> can.BusABC | None:
        """The bus currently open, if any."""
        return self._bus

    def _note_failure(self, error: BaseException | None, _wait: float) -> None:
        self.open_failures += 1
        log.warning("bus %s: cannot open (%s); retrying", self.name, error)

    def _run(self) -> None:
        supervisor = self

        class _Watch(can.Listener):
            def on_message_received(self, msg: can.Message) -> None:
                pass

            def on_error(self, exc: Exception) -> None:
                # python-can reports a listener's exception here too. Only the bus itself
                # (recv: a CanError or an OSError) is reopened; anything else is a listener's
                # fault, counted and logged, and the notifier goes on reading.
                if isinstance(exc, can.CanError | OSError):
                    log.error("bus %s failed: %s; reopening", supervisor.name, exc)
                    supervisor._failed.set()
                else:
                    supervisor.listener_faults.record(f"{type(exc).__name__}: {exc}")

        while not self._stop.is_set():
            try:
                bus = self._open()
            except StoppedError:
                return
            self._failed.clear()
            self._bus = bus
            notifier = can.Notifier(bus, [self.listener, _Watch()], timeout=0.5)
            close = self._on_open(bus, notifier) if self._on_open is not None else None
            self._failed.wait()
            if close is not None:
                close()
            notifier.stop()
            self._bus = None
            bus.shutdown()
            if not self._stop.is_set():
                self.reopens += 1
