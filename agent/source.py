"""Where frames come from: live python-can buses (reopened when they fail) and log replay."""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import can

from canvoy.errors import DecodeError
from canvoy.transport.backoff import StoppedError, retry_until_stopped

log = logging.getLogger(__name__)

# python-can readers by suffix; MF4 needs the optional 'canvoy[mf4]' extra (asammdf).
LOG_SUFFIXES = (".asc", ".blf", ".csv", ".db", ".log", ".mf4", ".trc", ".txt")


@dataclass(slots=True)
class ReplayStats:
    """What a replay read and what it could not."""

    frames: int = 0
    bad_lines: int = 0
    errors: list[str] = field(default_factory=list)


class _LineFile:
    """A text file that remembers its line number, so a reader can resume after a bad line."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("r", encoding="utf-8", errors="replace")
        self.line = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._file:
            self.line += 1
            yield text

    def close(self) -> None:
        self._file.close()


def _open_reader(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in LOG_SUFFIXES:
        raise DecodeError(
            f"log {str(path)!r} has an unknown format {suffix or '(none)'!r}: use one of "
            + ", ".join(LOG_SUFFIXES)
        )
    if suffix == ".mf4" and importlib.util.find_spec("asammdf") is None:
        raise DecodeError("reading MF4 needs asammdf: pip install 'canvoy[mf4]'")
    try:
        if suffix == ".asc":  # keep the recorded (absolute) times, as the other formats do
            return can.io.ASCReader(str(path), relative_timestamp=False)
        return can.LogReader(str(path))
    except (OSError, ValueError, NotImplementedError) as exc:
        raise DecodeError(f"cannot open log {str(path)!r}: {exc}") from exc


def read_log(path: Path, stats: ReplayStats | None = None) -> Iterator[can.Message]:
    """Every frame of a log file in recorded order, with recorded timestamps.

    A bad line in a candump log is counted in ``stats`` and skipped; in other formats an error
    ends the file early (what was read stays read) and is recorded in ``stats.errors``.

    Raises:
        DecodeError: the file is missing or of an unknown format.
    """
    stats = stats if stats is not None else ReplayStats()
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"log {str(path)!r} does not exist")
    if path.suffix.lower() == ".log":
        yield from _read_candump(path, stats)
        return
    reader = _open_reader(path)
    try:
        for msg in reader:
            stats.frames += 1
            yield msg
    except Exception as exc:  # a reader's parse error ends that reader, not the caller
        stats.errors.append(f"{path}: stopped after {stats.frames} frames: {exc}")
        log.error("log %s: stopped after %d frames: %s", path, stats.frames, exc)
    finally:
        reader.stop()


def _read_candump(path: Path, stats: ReplayStats) -> Iterator[can.Message]:
    source = _LineFile(path)
    try:
        while True:
            reader = can.io.CanutilsLogReader(source)  # type: ignore[arg-type]
            try:
                for msg in reader:
                    stats.frames += 1
                    yield msg
                return
            except Exception as exc:
                stats.bad_lines += 1
                log.warning("log %s line %d skipped: %s", path, source.line, exc)
    finally:
        source.close()


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


def parse_speed(text: str) -> Speed:
    """``max``, ``realtime`` or ``xN`` (N times real time).

    Raises:
        ValueError: anything else.
    """
    if text in ("max", "realtime"):
        return text  # type: ignore[return-value]
    if text.startswith("x"):
        try:
            factor = float(text[1:])
        except ValueError:
            factor = 0.0
        if factor > 0:
            return factor
    raise ValueError(f"speed {text!r} is invalid: use max, realtime or xN (e.g. x10)")


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
                log.error("bus %s failed: %s; reopening", supervisor.name, exc)
                supervisor._failed.set()

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
