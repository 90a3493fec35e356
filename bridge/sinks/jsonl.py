"""``type: jsonl``: verified, decoded records appended to a file, fsynced per batch, rotated.

A bridge that dies between writing a batch and recording that in its spool hands the same
records over again after the restart; the sink remembers the keys at the end of its files when
it opens them and skips those, so the file holds each record once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.base import SinkContext, register
from canvoy.config import build
from canvoy.errors import ConfigError, SinkError

# More than one delivery of the bridge's sink queue (delivery.BATCH_BYTES) and a record.
TAIL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class JsonlConfig:
    """Where to write and when to rotate."""

    path: Path
    max_bytes: int = 100 * 1024 * 1024
    keep: int = 5

    def __post_init__(self) -> None:
        if self.max_bytes < 4096 or self.keep < 1:
            raise ConfigError("max_bytes must be >= 4096 and keep >= 1")
        if self.path.is_dir():
            raise ConfigError(f"path: {self.path} is a directory; name a file")


class JsonlSink:
    """One JSON object per line; ``path.1`` .. ``path.<keep>`` are the rotated files."""

    def __init__(self, name: str, config: JsonlConfig) -> None:
        self.name = name
        self.config = config
        self._file: IO[bytes] | None = None
        self._recent = self._tail_keys()

    def _tail_keys(self) -> set[str]:
        """Keys of the records in the last TAIL_BYTES of the file (and the last rotated one)."""
        keys: set[str] = set()
        for path in (Path(f"{self.config.path}.1"), self.config.path):
            try:
                with path.open("rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - TAIL_BYTES))
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines[1:] if size > TAIL_BYTES else lines:  # the first may be cut
                try:
                    key = json.loads(line).get("key")
                except (ValueError, AttributeError):
                    continue
                if isinstance(key, str):
                    keys.add(key)
        return keys

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
        fresh = [r for r in records if r.key not in self._recent]
        if len(fresh) == len(records):
            self._recent.clear()  # past the records handed over again after a restart
        data = b"".join(r.json().encode() + b"\n" for r in fresh)
        if not data:
            return
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
