"""The SQLite outbox: sequence across restarts, eviction order, full disks, corrupt files."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from canvoy.agent.outbox import Outbox, OutboxConfig, open_status
from canvoy.agent.unconfirmed import DeliveryConfig
from canvoy.errors import StoreError
from canvoy.wire.envelope import unpack, verify

MiB = 1024 * 1024
KEY = ec.generate_private_key(ec.SECP256R1())


def _open(path: Path, max_bytes: int = 64 * MiB, page_limit: int | None = None) -> Outbox:
    """An outbox whose rows leave at the PUBACK (tests/agent/test_unconfirmed.py: the other)."""
    return Outbox(
        OutboxConfig(path=path, max_bytes=max_bytes),
        device="car-1",
        boot=os.urandom(16),
        key=KEY,
        delivery=DeliveryConfig(mode="broker"),
        page_limit=page_limit,
    )


def _noise(n: int = 100_000) -> bytes:
    return os.urandom(n)  # incompressible, so sizes are what they say


def test_rows_are_signed_and_sequence_continues_after_reopen(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.sqlite")
    assert [box.seal("telemetry", "none", b"x%d" % i) for i in range(3)] == [1, 2, 3]
    box.close()
    box = _open(tmp_path / "o.sqlite")
    assert box.seal("telemetry", "none", b"y") == 4
    rows = box.pending(10)
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    envelope = verify(unpack(rows[0].payload), KEY.public_key())
    assert (envelope.device, envelope.seq, envelope.body) == ("car-1", 1, b"x0")
    assert unpack(rows[3].payload).envelope.boot != envelope.boot  # a new boot id per start


def test_events_go_first_and_acknowledged_rows_leave(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.sqlite")
    box.seal("telemetry", "none", b"t1")
    box.seal("telemetry", "none", b"t2")
    box.seal("events", "none", b"e3")
    assert [(r.seq, r.kind) for r in box.pending(10)] == [
        (3, "events"),
        (1, "telemetry"),
        (2, "telemetry"),
    ]
    assert [r.seq for r in box.pending(10, skip={3, 1})] == [2]
    box.acknowledge([3, 1])
    status = box.status()
    assert (status.depth, status.counters["acked"]) == (1, 2)
    assert status.counters["last_ack_ms"] > 0


def test_full_outbox_evicts_oldest_telemetry_then_events(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.sqlite", max_bytes=MiB)
    box.seal("events", "none", _noise())
    for _ in range(12):
        box.seal("telemetry", "none", _noise())
    status = box.status()
    assert status.bytes <= MiB
    assert status.counters["evicted"] >= 3 and status.counters["evicted_events"] == 0
    kinds = [r.kind for r in box.pending(100)]
    assert kinds[0] == "events"  # the event survived while telemetry was left to evict
    seqs = [r.seq for r in box.pending(100)][1:]
    assert seqs == list(range(seqs[0], 14))  # the newest telemetry is kept, oldest went
    for _ in range(12):
        box.seal("events", "none", _noise())
    status = box.status()
    assert status.counters["evicted_events"] >= 1
    assert {r.kind for r in box.pending(100)} == {"events"}


def test_a_refused_row_moves_to_rejected_with_its_reason(tmp_path: Path) -> None:
    box = _open(tmp_path / "o.sqlite")
    seq = box.seal("telemetry", "none", b"x")
    assert seq is not None
    box.reject(seq, 0x87, "Not authorized")
    box.close()
    status = open_status(tmp_path / "o.sqlite")
    assert (status.depth, status.rejected, status.counters["rejected"]) == (0, 1, 1)


def _check_survives_full_disk(box: Outbox, rounds: int) -> None:
    sealed = [box.seal("telemetry", "none", _noise(60_000)) for _ in range(rounds)]
    status = box.status()
    assert status.counters["disk_full"] > 0, "the disk never filled up: the test proves nothing"
    assert status.counters["evicted"] > 0
    assert status.counters["dropped"] == 0
    assert sealed[-1] is not None, "the newest batch should fit after evicting old ones"
    numbers = [s for s in sealed if s is not None]
    assert numbers == sorted(set(numbers))  # never reused, never backwards
    assert [r.seq for r in box.pending(1000)][-1] == sealed[-1]


def test_disk_full_is_survived_by_evicting(tmp_path: Path) -> None:
    # max_page_count makes SQLite report SQLITE_FULL exactly as it does for ENOSPC.
    box = _open(tmp_path / "o.sqlite", page_limit=300)  # 1.2 MB with 4 KiB pages
    _check_survives_full_disk(box, 60)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs; skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_filesystem_is_survived(small_fs: Path) -> None:
    box = _open(small_fs / "o.sqlite")
    _check_survives_full_disk(box, 300)
    box.close()


def test_a_corrupt_outbox_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    box = _open(path)
    assert box.moved_aside is not None and box.moved_aside.exists()
    assert box.moved_aside.read_bytes().startswith(b"this is not a database")
    assert box.seal("events", "none", b"e") == 1
    assert "is corrupt" in caplog.text and str(box.moved_aside) in caplog.text


def test_an_outbox_in_a_place_that_cannot_exist_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot open outbox .*outbox.path"):
        _open(blocker / "o.sqlite")
