"""Envelope bodies of protocol v1: columnar telemetry, events and status (receipts: confirm.py).

Every body is a msgpack map, compressed with zstd when that makes it smaller. Parsing is bounded
(size, nesting, container lengths) and every field's type is checked, because a bridge reads
bodies from devices it trusts only as far as their signatures go. See docs/PROTOCOL.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal

import msgpack
import zstandard

from canvoy.wire.envelope import Encoding
from canvoy.wire.errors import MalformedError

# Bounds a receiver checks before the work they limit (docs/PROTOCOL.md, "Bounds"). An agent's
# bodies stay far inside them: its batches are <= 128 KiB before compression.
MAX_BODY_BYTES = 256 * 1024  # decompressed
RATIO_FREE_BYTES = 128 * 1024  # decompressed sizes up to this are never a bomb
MAX_RATIO = 256  # decompressed / compressed, above RATIO_FREE_BYTES
MAX_STRING_BYTES = 8 * 1024
MAX_COUNT = 2**63 - 1  # status counts and times
MAX_DEPTH = 8  # nested maps and arrays in a body, the body's own map included
MAX_SERIES = 4096  # series in one telemetry body
MAX_SAMPLES = 65_536  # samples in one telemetry body, and so in any one series
_CONTAINERS = frozenset({list, dict})
_ZSTD_LEVEL = 3
# python-zstandard contexts are not thread-safe (two threads sharing one compressor corrupt its
# state, up to a segfault): each thread that encodes gets its own, made on its first encode.
_contexts = threading.local()
Scalar = int | float | str | bool
_INT = frozenset({int})
_SCALARS = frozenset({int, float, str, bool})


def encode(content: Mapping[str, Any]) -> tuple[Encoding, bytes]:
    """msgpack ``content``; zstd-compress it when that is smaller. Safe from any thread."""
    raw = bytes(msgpack.packb(content, use_bin_type=True))
    compressor: zstandard.ZstdCompressor | None = getattr(_contexts, "compressor", None)
    if compressor is None:
        compressor = _contexts.compressor = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    packed = compressor.compress(raw)
    return ("zstd", packed) if len(packed) < len(raw) else ("none", raw)


def decode(encoding: str, body: bytes) -> dict[str, Any]:
    """The body's map, decompressed and parsed with bounds.

    Raises:
        MalformedError: unknown encoding, a decompression bomb, bad msgpack, or not a map.
    """
    compressed = max(1, len(body))
    if encoding == "zstd":
        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_BODY_BYTES)
        except zstandard.ZstdError as exc:
            raise MalformedError(f"body does not decompress: {exc}") from exc
        if len(body) > MAX_BODY_BYTES:
            raise MalformedError(f"body decompresses beyond {MAX_BODY_BYTES} bytes")
        if len(body) > RATIO_FREE_BYTES and len(body) > MAX_RATIO * compressed:
            raise MalformedError(
                f"body inflates {len(body) // compressed}-fold, beyond {MAX_RATIO}:1"
            )
    elif encoding != "none":
        raise MalformedError(f"body encoding {encoding!r} is unknown")
    try:
        content = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_ext_len=0,
            max_str_len=MAX_STRING_BYTES,
            max_bin_len=MAX_BODY_BYTES,
            max_array_len=MAX_SAMPLES,
            max_map_len=10_000,
        )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, ...
        raise MalformedError(f"body is not valid msgpack: {exc}") from exc
    if not isinstance(content, dict):
        raise MalformedError(f"body must be a msgpack map, not {type(content).__name__}")
    check_depth(content)
    return content


def check_depth(content: object, limit: int = MAX_DEPTH) -> None:
    """Refuse values nested deeper than ``limit``, without recursion (and so without a limit
    of Python's own being reached later, by a JSON encoder or pickle).

    Raises:
        MalformedError: nested deeper than ``limit``.
    """
    stack: list[tuple[object, int]] = [(content, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise MalformedError(f"body nests deeper than {limit} levels")
        children = value.values() if isinstance(value, dict) else value
        assert isinstance(children, Iterable)
        # Only look inside when a container holds containers: long sample arrays stay at C speed.
        if _CONTAINERS.isdisjoint(map(type, children)):
            continue
        stack.extend((c, depth + 1) for c in children if type(c) in _CONTAINERS)


def _get(content: Mapping[str, Any], name: str, want: type | tuple[type, ...]) -> Any:
    value = content.get(name)
    if not isinstance(value, want) or (isinstance(value, bool) and want is int):
        raise MalformedError(f"body field {name!r} is missing or of the wrong type")
    return value


# -- telemetry --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    """The samples of one signal in a batch: times in Unix ms, and values."""

    key: str
    times_ms: tuple[int, ...]
    values: tuple[Scalar, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Telemetry:
    """A telemetry batch: the policy it was collected under and one series per signal."""

    policy: str
    series: tuple[Series, ...] = field(default_factory=tuple)

    @property
    def samples(self) -> int:
        """How many values the batch holds."""
        return sum(len(s.values) for s in self.series)


def telemetry_content(
    policy: str, series: Mapping[str, tuple[list[int], list[Scalar]]]
) -> dict[str, Any]:
    """The columnar map for ``series`` (key -> times in ms, values); times become deltas.

    ``t0`` is the earliest time; each signal's first time is relative to ``t0`` and every
    later one to the signal's previous sample, so regular cycles compress to runs.
    """
    t0 = min((times[0] for times, _v in series.values() if times), default=0)
    columns = []
    for key, (times, values) in series.items():
        deltas, last = [], t0
        for t in times:
            deltas.append(t - last)
            last = t
        columns.append([key, deltas, values])
    return {"policy": policy, "t0": t0, "series": columns}


def parse_telemetry(content: Mapping[str, Any]) -> Telemetry:
    """Check and expand a telemetry body.

    Raises:
        MalformedError: a field is missing, of the wrong type, or columns differ in length.
    """
    policy = _get(content, "policy", str)
    t0 = _get(content, "t0", int)
    out = []
    columns = _get(content, "series", list)
    if len(columns) > MAX_SERIES:
        raise MalformedError(f"{len(columns)} series in one body, more than {MAX_SERIES}")
    total = 0
    for column in columns:
        if not (isinstance(column, list) and len(column) == 3):
            raise MalformedError("a telemetry series must be [key, deltas, values]")
        key, deltas, values = column
        if not (isinstance(key, str) and isinstance(deltas, list) and isinstance(values, list)):
            raise MalformedError("a telemetry series must be [str, array, array]")
        if len(deltas) != len(values):
            raise MalformedError(f"series {key!r}: {len(deltas)} times but {len(values)} values")
        total += len(values)
        if total > MAX_SAMPLES:
            raise MalformedError(f"more than {MAX_SAMPLES} samples in one body")
        # Type checks through map/set so that they run at C speed: batches hold many samples.
        if not set(map(type, deltas)) <= _INT:
            raise MalformedError(f"series {key!r}: a time delta is not an integer")
        if not set(map(type, values)) <= _SCALARS:
            raise MalformedError(f"series {key!r}: a value is not a number or a string")
        times = tuple(accumulate(deltas, initial=t0))[1:]
        out.append(Series(key, times, tuple(values)))
    return Telemetry(policy=policy, series=tuple(out))


# -- status -----------------------------------------------------------------------------------

State = Literal["online", "offline"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """A device's birth (online) or last will / goodbye (offline) message."""

    state: State
    agent: str
    policy: str
    cert_pem: str
    outbox_depth: int = 0
    # Since protocol v1.1 (optional; absent from older agents, read as below):
    connected_ms: int | None = None  # when this connection began
    heartbeat_s: int = 0  # the birth is published again this often while online (0: never)
    overdue: int = 0  # event envelopes no bridge confirmed in time
    lost: bool = False  # true in the last will: the broker sent it, the link was lost


def status_content(status: Status) -> dict[str, Any]:
    """The map for a status envelope."""
    content: dict[str, Any] = {
        "state": status.state,
        "agent": status.agent,
        "policy": status.policy,
        "cert": status.cert_pem,
        "outbox": status.outbox_depth,
        "heartbeat_s": status.heartbeat_s,
        "overdue": status.overdue,
        "lost": status.lost,
    }
    if status.connected_ms is not None:
        content["connected_ms"] = status.connected_ms
    return content


def _optional(content: Mapping[str, Any], name: str, want: type, default: Any) -> Any:
    return _get(content, name, want) if name in content else default


def parse_status(content: Mapping[str, Any]) -> Status:
    """Check a status body.

    Raises:
        MalformedError: a field is missing or of the wrong type.
    """
    state = _get(content, "state", str)
    if state not in ("online", "offline"):
        raise MalformedError(f"status state {state!r} is neither online nor offline")
    status = Status(
        state=state,
        agent=_get(content, "agent", str),
        policy=_get(content, "policy", str),
        cert_pem=_get(content, "cert", str),
        outbox_depth=_get(content, "outbox", int),
        connected_ms=_optional(content, "connected_ms", int, None),
        heartbeat_s=_optional(content, "heartbeat_s", int, 0),
        overdue=_optional(content, "overdue", int, 0),
        lost=_optional(content, "lost", bool, False),
    )
    for name, value in (
        ("outbox", status.outbox_depth),
        ("connected_ms", status.connected_ms or 0),
        ("heartbeat_s", status.heartbeat_s),
        ("overdue", status.overdue),
    ):
        if not 0 <= value <= MAX_COUNT:
            raise MalformedError(f"status field {name!r} is {value}, not 0..{MAX_COUNT}")
    return status
