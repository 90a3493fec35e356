"""Confirmations on ``canvoy/v1/<device>/receipts``: which envelopes a bridge has forwarded.

A confirmation is JSON (docs/PROTOCOL.md, "Confirmations and receipts")::

    {"keys": ["<device>:<boot>:<seq>", ...], "delivered_ms": 1767225600000,
     "confirmed": [{"boot": "<32 hex digits>", "ranges": [[first, last], ...]}, ...]}

``confirmed`` lists, per boot, inclusive ranges of sequence numbers that the bridge has handed
to every routed sink (taken or dead-lettered); the device may delete them from its outbox.
``keys`` are the events envelopes among them, named one by one for the service-desk view. The
device reads this from the network, so parsing is bounded before any work: size first, then
counts, types and ranges.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canvoy.wire.envelope import MAX_SEQ
from canvoy.wire.errors import MalformedError, OversizeError

MAX_CONFIRM_BYTES = 64 * 1024  # the whole JSON payload
MAX_BOOTS = 16  # boots in one confirmation
MAX_RANGES = 2048  # ranges in one confirmation, over all boots
MAX_KEYS = 512  # events keys in one confirmation
MAX_KEY_CHARS = 128  # device (64) + boot (32) + seq (19) + separators
# What a bridge puts in one payload: a range is at most ~45 bytes of JSON and a key ~130, so a
# payload stays far below MAX_CONFIRM_BYTES whatever the numbers are.
RANGES_PER_PAYLOAD = 1024
KEYS_PER_PAYLOAD = 128
_BOOT = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirmation:
    """One parsed confirmation: events keys, when, and (boot, first, last) ranges."""

    keys: tuple[str, ...]
    delivered_ms: int
    ranges: tuple[tuple[bytes, int, int], ...]


def ranges_of(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted inclusive ranges covering exactly ``seqs``: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def confirmation_payloads(
    keys: Sequence[str], confirmed: Mapping[bytes, Iterable[int]], delivered_ms: int
) -> list[bytes]:
    """The JSON payloads confirming ``confirmed`` (boot -> sequence numbers) and naming the
    events ``keys``; as many payloads as it takes to stay inside every bound."""
    pieces = [
        (boot, first, last)
        for boot, seqs in sorted(confirmed.items())
        for first, last in ranges_of(seqs)
    ]
    payloads: list[bytes] = []
    taken = named = 0
    while True:
        by_boot: dict[bytes, list[list[int]]] = {}
        count = 0
        while taken < len(pieces) and count < RANGES_PER_PAYLOAD:
            boot, first, last = pieces[taken]
            if boot not in by_boot and len(by_boot) == MAX_BOOTS:
                break
            by_boot.setdefault(boot, []).append([first, last])
            taken, count = taken + 1, count + 1
        content = {
            "keys": list(keys[named : named + KEYS_PER_PAYLOAD]),
            "delivered_ms": delivered_ms,
            "confirmed": [{"boot": b.hex(), "ranges": r} for b, r in by_boot.items()],
        }
        named += KEYS_PER_PAYLOAD
        payloads.append(json.dumps(content, separators=(",", ":")).encode())
        if taken >= len(pieces) and named >= len(keys):
            return payloads


def parse_confirmation(payload: bytes) -> Confirmation:
    """Check a confirmation (or a plain receipt without ``confirmed``) and return it.

    Raises:
        OversizeError: the payload is larger than MAX_CONFIRM_BYTES.
        MalformedError: not JSON, nested too deep, a bound exceeded, or a field of the
            wrong type or out of range (the message names it).
    """
    if len(payload) > MAX_CONFIRM_BYTES:
        raise OversizeError(f"confirmation of {len(payload)} bytes > {MAX_CONFIRM_BYTES}")
    try:
        content = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # also a number too long for int()
        raise MalformedError(f"confirmation is not JSON: {str(exc)[:100]}") from exc
    if not isinstance(content, dict):
        raise MalformedError("confirmation is not a JSON object")
    keys = content.get("keys", [])
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        raise MalformedError(f"confirmation 'keys' must be a list of at most {MAX_KEYS}")
    if not all(isinstance(k, str) and len(k) <= MAX_KEY_CHARS for k in keys):
        raise MalformedError(f"confirmation keys must be strings of at most {MAX_KEY_CHARS}")
    delivered_ms = _seq(content.get("delivered_ms"), "delivered_ms")
    boots = content.get("confirmed", [])
    if not isinstance(boots, list) or len(boots) > MAX_BOOTS:
        raise MalformedError(f"confirmation 'confirmed' must be a list of at most {MAX_BOOTS}")
    ranges: list[tuple[bytes, int, int]] = []
    for entry in boots:
        ranges.extend(_boot_ranges(entry, MAX_RANGES - len(ranges)))
    return Confirmation(keys=tuple(keys), delivered_ms=delivered_ms, ranges=tuple(ranges))


def _boot_ranges(entry: Any, room: int) -> list[tuple[bytes, int, int]]:
    if not isinstance(entry, dict):
        raise MalformedError("each 'confirmed' entry must be an object with boot and ranges")
    boot = entry.get("boot")
    if not isinstance(boot, str) or _BOOT.fullmatch(boot) is None:
        raise MalformedError("confirmed boot must be 32 lowercase hex digits")
    pairs = entry.get("ranges")
    if not isinstance(pairs, list) or len(pairs) > room:
        raise MalformedError(f"confirmed ranges must be a list; at most {MAX_RANGES} in all")
    out = []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise MalformedError("a confirmed range must be [first, last]")
        first, last = _seq(pair[0], "range start"), _seq(pair[1], "range end")
        if first > last:
            raise MalformedError(f"confirmed range [{first}, {last}] ends before it starts")
        out.append((bytes.fromhex(boot), first, last))
    return out


def _seq(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise MalformedError(f"confirmation {name} must be an integer in 0..2^63-1")
    return value
