"""How canvoy's log lines look: text for people, or one JSON object per line for journald."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Literal

LogFormat = Literal["text", "json"]
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message`` and, when the record carries one, ``exception`` (the formatted traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (a newline in a message stays escaped)."""
        line: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def level_for(verbose: int, quiet: int, named: str | None, *, service: bool = False) -> int:
    """The root level: ``named`` (``--log-level``) when given, else the default moved by -v/-q.

    The default is WARNING for commands that do one thing and end, and INFO for the services
    (``agent run``, ``bridge run``, ``broker``), whose lifecycle lines an operator looks for.
    """
    if named is not None:
        return logging.getLevelNamesMapping()[named.upper()]
    steps = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    base = 2 if service else 1
    return steps[max(0, min(base + verbose - quiet, len(steps) - 1))]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure`` installs; a second call replaces it, and only it."""


def configure(level: int, fmt: LogFormat) -> None:
    """Send every log record at ``level`` or above to stderr in ``fmt``."""
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
