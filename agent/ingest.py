"""Run every configured bus: live buses under a supervisor, logs replayed in a thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import can

from canvoy.agent.buses import BusConfig, driver_filters
from canvoy.agent.collect import Collector, Sample
from canvoy.agent.database import build_index, load_databases
from canvoy.agent.obd import response_filters
from canvoy.agent.policy import Policy
from canvoy.agent.source import (
    BusSupervisor,
    ReplayStats,
    check_log,
    open_bus,
    paced,
    parse_speed,
    replay_frames,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Channel:
    """One running bus: its collector and whichever source feeds it."""

    config: BusConfig
    collector: Collector
    listener: can.Listener
    supervisor: BusSupervisor | None = None
    replay: ReplayStats | None = None
    thread: threading.Thread | None = None


OnOpen = Callable[[can.BusABC, can.Notifier], Callable[[], None]]


class _Tee(can.Listener):
    """The collector first, then every tap; a tap's failure never reaches the bus."""

    def __init__(self, collector: Collector, taps: list[can.Listener]) -> None:
        self.collector = collector
        self.taps = taps
        self.tap_errors = 0

    def on_message_received(self, msg: can.Message) -> None:
        self.collector.on_message_received(msg)
        for tap in self.taps:
            try:
                tap.on_message_received(msg)
            except Exception as exc:  # a diagnostic decoder must not stop ingest
                self.tap_errors += 1
                log.debug("tap %s failed on a frame: %s", type(tap).__name__, exc)

    def on_error(self, exc: Exception) -> None:
        self.collector.on_error(exc)


def _warn(bus: str, text: str) -> None:
    log.warning("bus %s: replay: %s", bus, text)


class Ingest:
    """Frames from every bus in the config to samples, through one Collector per bus.

    Nothing here ever stops the agent: a bus that fails is reopened, a log that ends or breaks
    is logged, and every frame that could not be used is counted in its collector's stats.
    """

    def __init__(
        self,
        buses: Sequence[BusConfig],
        policy: Policy,
        emit: Callable[[Sample], None],
        *,
        on_unknown: Callable[[can.Message], None] | None = None,
        taps: Callable[[BusConfig, bool], list[can.Listener]] | None = None,
        on_open: Callable[[BusConfig], OnOpen | None] | None = None,
        room: Callable[[], bool] | None = None,
    ) -> None:
        """``taps(bus, is_j1939)`` gives extra listeners that see every raw frame of a bus
        (J1939 DM1 and transport-protocol reassembly). ``room()`` says whether the queue
        behind ``emit`` has room: a log replay waits for it (a file can wait, a bus cannot);
        live buses never wait.

        Raises:
            DecodeError: a database cannot be loaded, or a replayed log has no readable frame.
        """
        self._stop = threading.Event()
        self._room = room
        self.channels: list[Channel] = []
        for bus in buses:
            index = build_index(load_databases(bus.databases), j1939=bus.j1939)
            collector = Collector(
                bus=bus.name, index=index, policy=policy, emit=emit, on_unknown=on_unknown
            )
            extra = taps(bus, index.j1939) if taps is not None else []
            listener: can.Listener = _Tee(collector, extra) if extra else collector
            channel = Channel(config=bus, collector=collector, listener=listener)
            if bus.interface is not None and bus.channel is not None:
                filters = driver_filters(index) if bus.filters == "auto" else None
                if filters is not None and bus.obd is not None:
                    filters = [*filters, *response_filters(bus.obd)]
                opener = partial(
                    open_bus,
                    interface=bus.interface,
                    channel=bus.channel,
                    bitrate=bus.bitrate,
                    fd=bus.fd,
                    filters=filters,
                    options=bus.options,
                )
                channel.supervisor = BusSupervisor(
                    bus.name, listener, opener, on_open=on_open(bus) if on_open else None
                )
            else:
                assert bus.replay is not None
                check_log(bus.replay)  # refuse at start, not in a thread later
                channel.replay = ReplayStats(on_warning=partial(_warn, bus.name))
                channel.thread = threading.Thread(
                    target=self._replay, args=(channel,), name=f"replay-{bus.name}", daemon=True
                )
            self.channels.append(channel)

    def start(self) -> None:
        """Start reading every bus."""
        for channel in self.channels:
            if channel.supervisor is not None:
                channel.supervisor.start()
            elif channel.thread is not None:
                channel.thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop reading; frames already handed to the collectors stay handled."""
        self._stop.set()
        for channel in self.channels:
            if channel.supervisor is not None:
                channel.supervisor.stop(timeout_s)
            elif channel.thread is not None:
                channel.thread.join(timeout_s)

    def replays_done(self) -> bool:
        """True when every replayed log has ended (live buses never end)."""
        return all(c.thread is not None and not c.thread.is_alive() for c in self.channels)

    def _replay(self, channel: Channel) -> None:
        bus = channel.config
        assert bus.replay is not None and channel.replay is not None
        on_frame = channel.listener.on_message_received
        room, stop = self._room, self._stop
        started = time.perf_counter()
        try:
            frames = replay_frames(bus.replay, loop=bus.loop, stats=channel.replay)
            speed = parse_speed(bus.speed)
            # At full speed the pacing layer has nothing to do: the stop check is made here.
            source = frames if speed == "max" else paced(frames, speed, stop)
            for i, msg in enumerate(source):
                # Every 1024 frames is often enough: the queue waits at half full.
                if not i & 1023:
                    if stop.is_set():
                        break
                    while room is not None and not room() and not stop.wait(0.002):
                        pass
                on_frame(msg)
        except Exception as exc:  # the ingest loop survives anything a log file does
            channel.replay.errors.append(str(exc))
            log.error("bus %s: replay of %s stopped: %s", bus.name, bus.replay, exc)
        seconds = time.perf_counter() - started
        log.info(
            "bus %s: replay of %s ended: %d frames in %.2f s (%.0f frames/s)",
            bus.name,
            bus.replay.name,
            channel.replay.frames,
            seconds,
            channel.replay.frames / seconds if seconds > 0 else 0.0,
        )
        if channel.replay.bad_lines:
            log.warning(
                "bus %s: replay: %d unreadable line(s) of %s skipped",
                bus.name,
                channel.replay.bad_lines,
                bus.replay,
            )
