"""``canvoy decode``: a CAN log through one or more databases, as JSON Lines."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from canvoy.agent.database import build_index, load_databases
from canvoy.agent.decode import Decoder
from canvoy.agent.source import ReplayStats, read_log
from canvoy.errors import DecodeError


def add_parser(sub: Any) -> None:
    """Register ``canvoy decode``."""
    parser = sub.add_parser(
        "decode",
        help="decode a CAN log with DBC/KCD/SYM/ARXML databases into JSON Lines",
        description="One JSON object per decoded frame; unknown ids are left out and a summary "
        "goes to stderr. Formats: any python-can reads (asc, blf, log, csv, trc, db, mf4).",
    )
    parser.add_argument("log", type=Path, metavar="LOGFILE")
    parser.add_argument("--dbc", type=Path, action="append", required=True, help="repeatable")
    parser.add_argument("--j1939", action="store_true", help="match 29-bit ids by PGN")
    parser.add_argument(
        "--signals",
        nargs="+",
        metavar="GLOB",
        help="only these signals (message.signal globs or signal globs)",
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.set_defaults(func=_run)


def _keep(patterns: list[str] | None, message: str, signal: str) -> bool:
    if not patterns:
        return True
    return any(
        fnmatch.fnmatchcase(signal, p) or fnmatch.fnmatchcase(f"{message}.{signal}", p)
        for p in patterns
    )


def _run(args: argparse.Namespace) -> int:
    index = build_index(load_databases(args.dbc), j1939=True if args.j1939 else None)
    decoder = Decoder(index)
    replay = ReplayStats()
    frames = read_log(args.log, replay)
    out: IO[str]
    try:
        out = args.output.open("w") if args.output else sys.stdout
    except OSError as exc:
        raise DecodeError(f"cannot write {str(args.output)!r}: {exc.strerror}") from exc
    started = time.perf_counter()
    written = 0
    progress = _progress(args.log) if sys.stderr.isatty() else None
    try:
        for msg in frames:
            if progress is not None and decoder.stats.frames % 20_000 == 0:
                progress.update(TaskID(0), completed=decoder.stats.frames)
            decoded = decoder.decode(msg)
            if decoded is None:
                continue
            signals = {
                k: v for k, v in decoded.signals.items() if _keep(args.signals, decoded.message, k)
            }
            if args.signals and not signals:
                continue
            row: dict[str, Any] = {
                "t": decoded.t,
                "bus": decoded.channel,
                "id": decoded.frame_id,
                "name": decoded.message,
                "signals": signals,
            }
            if decoded.source is not None:
                row["sa"] = decoded.source
            out.write(json.dumps(row) + "\n")
            written += 1
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    finally:
        if progress is not None:
            progress.stop()
        if args.output:
            out.close()
    _summary(decoder, replay, written, time.perf_counter() - started)
    return 0


def _progress(log: Path) -> Progress:
    """A live frame counter on the terminal (stderr), gone when the file is done."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"decoding {log.name}: {{task.completed:,}} frames"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    progress.add_task("decode", total=None)
    progress.start()
    return progress


def _summary(decoder: Decoder, replay: ReplayStats, written: int, seconds: float) -> None:
    s = decoder.stats
    print(
        f"frames read {s.frames}, decoded {s.decoded} ({written} written), "
        f"multi-frame {s.reassembled} ({s.transport} frames), "
        f"unknown ids {len(s.unknown)} ({s.unknown_frames} frames), malformed {s.malformed}, "
        f"error frames {s.error_frames}, bad log lines {replay.bad_lines}, "
        f"{seconds:.2f} s, {s.frames / seconds if seconds else 0:,.0f} frames/s",
        file=sys.stderr,
    )
    for error in replay.errors:
        print(f"warning: {error}", file=sys.stderr)
