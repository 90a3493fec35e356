"""The jsonl sink after a crash: the records handed over again are not written twice."""

from __future__ import annotations

from pathlib import Path

from canvoy.bridge.records import Record
from canvoy.bridge.sinks.jsonl import JsonlConfig, JsonlSink


def _records(start: int, count: int) -> list[Record]:
    return [
        Record(f"car-1:ab:{i}", "car-1", "telemetry", {"key": f"car-1:ab:{i}", "seq": i})
        for i in range(start, start + count)
    ]


def test_a_reopened_sink_skips_what_it_already_wrote(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = JsonlSink("files", JsonlConfig(path=path))
    first.deliver(_records(0, 10))
    first.close()  # the bridge died before its spool knew
    again = JsonlSink("files", JsonlConfig(path=path))
    again.deliver(_records(5, 10))  # 5..9 again, then 10..14
    again.deliver(_records(15, 1))
    again.deliver(_records(5, 1))  # past the repeats, the sink writes what it is given
    again.close()
    seqs = [int(line.split('"seq":')[1].rstrip("}")) for line in path.read_text().splitlines()]
    assert seqs == [*range(16), 5]
