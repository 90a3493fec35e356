"""``type: jsonl``: verified, decoded records appended to a file, fsynced per batch, rotated."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import ConfigError, SinkError


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonlConfig:
    """Where to write and when to rotate."""

    path: Path
    max_bytes: int = 100 * 1024 * 1024
    keep: int = 5

    def __post_init__(self) -> None:
        if self.max_bytes < 4096 or self.keep < 1:
            raise ConfigError("max_bytes must be >= 4096 and keep >= 1")


class JsonlSink:
    """One JSON object per line; ``path.1`` .. ``path.<keep>`` are the rotated files."""

    def __init__(self, name: str, config: JsonlConfig) -> None:
        self.name = name
        self.config = config
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.config.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.config.path.open("ab")
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        path, keep = self.config.path, self.config.keep
        for i in range(keep - 1, 0, -1):
            older = Path(f"{path}.{i}")
            if older.exists():
                older.replace(Path(f"{path}.{i + 1}"))
        path.replace(Path(f"{path}.1"))

    def deliver(self, records: Sequence[Record]) -> None:
        """Append and fsync.

        Raises:
            SinkError: the file cannot be written (disk full, permissions).
        """
        data = b"".join(r.json().encode() + b"\n" for r in records)
        try:
            out = self._open()
            if out.tell() and out.tell() + len(data) > self.config.max_bytes:
                self._rotate()
                out = self._open()
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        except OSError as exc:
            if self._file is not None:
                self._file.close()
                self._file = None
            raise SinkError(f"sink {self.name}: cannot write {self.config.path}: {exc}") from exc

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


@register("jsonl")
def _make(name: str, options: Mapping[str, Any], _context: SinkContext) -> JsonlSink:
    return JsonlSink(name, build(JsonlConfig, options, f"sinks.{name}"))
