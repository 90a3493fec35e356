"""``canvoy decode``: a CAN log (or candump on standard input) through databases, as JSON Lines,
CSV or a table."""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import can
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from canvoy.agent.candump import read_stream
from canvoy.agent.database import build_index, load_databases
from canvoy.agent.decode import Decoded, Decoder
from canvoy.agent.source import ReplayStats, read_log
from canvoy.commands.values import resolutions, rounded, text
from canvoy.errors import DecodeError

STDIN = "-"
FORMATS = ("jsonl", "csv", "table")
COLUMNS = ("t", "bus", "id", "sa", "message", "signal", "value")


def add_parser(sub: Any) -> None:
    """Register ``canvoy decode``."""
    parser = sub.add_parser(
        "decode",
        help="decode a CAN log or candump output with DBC/KCD/SYM/ARXML databases",
        description="Decodes every frame the databases know; unknown ids are left out and a "
        "summary goes to stderr. LOGFILE is any format python-can reads (asc, blf, log, csv, "
        "trc, db, mf4), or - for candump text on standard input (candump -L, or candump's own "
        "output). Ids are hexadecimal, as candump and cantools print them: 3 digits for "
        "11-bit ids, 8 for 29-bit ids.",
        epilog="examples:\n"
        "  candump -L can0 | canvoy decode --dbc car.dbc -\n"
        "  candump can0 | canvoy decode --dbc car.dbc - --format table\n"
        "  canvoy decode --dbc car.dbc drive.blf --signals 'ENGINE.*,VehicleSpeed' "
        "--format csv -o drive.csv",
    )
    parser.add_argument(
        "log", metavar="LOGFILE", help="the log file, or - for candump text on standard input"
    )
    parser.add_argument(
        "--dbc",
        type=Path,
        action="append",
        required=True,
        metavar="FILE",
        help="a DBC, KCD, SYM or ARXML database (repeatable)",
    )
    parser.add_argument("--j1939", action="store_true", help="match 29-bit ids by PGN")
    parser.add_argument(
        "--signals",
        "--signal",
        action="append",
        metavar="GLOB[,GLOB...]",
        help="only these signals: signal or MESSAGE.signal globs, comma-separated or repeated",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl: one object per frame (default); csv: one row per signal, header first; "
        "table: aligned columns for reading",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout"
    )
    parser.set_defaults(func=_run)


def hex_id(frame_id: int, extended: bool) -> str:
    """An id as candump prints it: ``1F0`` (11-bit), ``18FEF100`` (29-bit)."""
    return f"{frame_id:08X}" if extended else f"{frame_id:03X}"


def patterns(values: list[str] | None) -> list[str]:
    """The globs of ``--signals`` (comma-separated, repeatable), blanks left out."""
    return [p.strip() for value in values or [] for p in value.split(",") if p.strip()]


def _keep(globs: list[str], message: str, signal: str) -> bool:
    if not globs:
        return True
    return any(
        fnmatch.fnmatchcase(signal, p) or fnmatch.fnmatchcase(f"{message}.{signal}", p)
        for p in globs
    )


class _Writer:
    """Writes decoded frames in one format; values at their signal's resolution."""

    def __init__(self, out: IO[str], fmt: str, places: dict[str, int | None]) -> None:
        self._out = out
        self._places = places
        self._csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)
        self.write: Callable[[Decoded, dict[str, Any]], None] = {
            "jsonl": self._jsonl,
            "csv": self._rows,
            "table": self._rows,
        }[fmt]
        self._table = fmt == "table"

    def _value(self, decoded: Decoded, signal: str, value: object) -> object:
        return rounded(value, self._places.get(f"{decoded.message}.{signal}"))

    def _jsonl(self, decoded: Decoded, signals: dict[str, Any]) -> None:
        row: dict[str, Any] = {
            "t": decoded.t,
            "bus": decoded.channel,
            "id": hex_id(decoded.frame_id, decoded.is_extended),
            "name": decoded.message,
            "signals": {k: self._value(decoded, k, v) for k, v in signals.items()},
        }
        if decoded.source is not None:
            row["sa"] = decoded.source
        self._out.write(json.dumps(row) + "\n")

    def _rows(self, decoded: Decoded, signals: dict[str, Any]) -> None:
        ident = hex_id(decoded.frame_id, decoded.is_extended)
        sa = f"{decoded.source:02X}" if decoded.source is not None else ""
        for name, value in signals.items():
            shown = text(value, self._places.get(f"{decoded.message}.{name}"))
            if self._csv is not None:
                self._csv.writerow(
                    (f"{decoded.t:.6f}", decoded.channel, ident, sa, decoded.message, name, shown)
                )
            else:
                self._out.write(
                    f"{decoded.t:17.6f}  {decoded.channel:<6} {ident:>8} {sa:>2}  "
                    f"{decoded.message:<24} {name:<28} {shown}\n"
                )


def _frames(log: str, replay: ReplayStats) -> Iterator[can.Message]:
    if log == STDIN:
        if sys.stdin is None:  # started with standard input closed (<&-)
            raise DecodeError(
                "standard input is closed: pipe candump into it "
                "(candump -L can0 | canvoy decode --dbc car.dbc -) or name a log file"
            )
        if sys.stdin.isatty():
            print("reading candump text from standard input (Ctrl-D to end)", file=sys.stderr)
        if isinstance(sys.stdin, io.TextIOWrapper):
            sys.stdin.reconfigure(errors="replace")  # a stray byte is a bad line, not a crash
        return read_stream(sys.stdin, replay)
    return read_log(Path(log), replay)


def _run(args: argparse.Namespace) -> int:
    databases = load_databases(args.dbc)
    decoder = Decoder(build_index(databases, j1939=True if args.j1939 else None))
    replay = ReplayStats()
    frames = _frames(args.log, replay)
    globs = patterns(args.signals)
    out: IO[str]
    try:
        out = args.output.open("w", newline="") if args.output else sys.stdout
    except OSError as exc:
        raise DecodeError(f"cannot write {str(args.output)!r}: {exc.strerror}") from exc
    writer = _Writer(out, args.format, resolutions(databases))
    started = time.perf_counter()
    written = 0
    name = "standard input" if args.log == STDIN else Path(args.log).name
    progress = _progress(name) if sys.stderr.isatty() and args.log != STDIN else None
    try:
        for msg in frames:
            if progress is not None and decoder.stats.frames % 20_000 == 0:
                progress.update(TaskID(0), completed=decoder.stats.frames)
            decoded = decoder.decode(msg)
            if decoded is None:
                continue
            signals = {k: v for k, v in decoded.signals.items() if _keep(globs, decoded.message, k)}
            if globs and not signals:
                continue
            writer.write(decoded, signals)
            written += 1
            if args.log == STDIN and not args.output:
                out.flush()  # a live candump: each frame as it comes
    finally:  # a closed stdout (| head) goes up to the CLI, which ends quietly
        if progress is not None:
            progress.stop()
        if args.output:
            out.close()
    _summary(decoder, replay, written, time.perf_counter() - started)
    return 0


def _progress(name: str) -> Progress:
    """A live frame counter on the terminal (stderr), gone when the file is done."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn(f"decoding {name}: {{task.completed:,}} frames"),
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
