"""Bodies are encoded from two threads at once, as the sealing and publisher threads do."""

from __future__ import annotations

import threading

from canvoy.wire import body

ENCODES = 100_000


def test_two_threads_encode_100000_bodies_without_an_error() -> None:
    """The sealing thread's telemetry and the publisher's status, interleaved on one process."""
    telemetry = body.telemetry_content(
        "p" * 64, {f"pt/ENGINE/Signal{i}": (list(range(0, 200, 10)), [1.5] * 20) for i in range(8)}
    )
    status = body.status_content(
        body.Status(state="online", agent="1", policy="p" * 64, cert_pem="-----" * 100)
    )
    errors: list[BaseException] = []
    wrong: list[int] = []
    start = threading.Barrier(2)

    def encode(content: dict[str, object], count: int) -> None:
        start.wait()
        try:
            for i in range(count):
                encoding, data = body.encode(content)
                if body.decode(encoding, data) != content:
                    wrong.append(i)
        except BaseException as exc:  # any error at all fails the test
            errors.append(exc)

    threads = [
        threading.Thread(target=encode, args=(telemetry, ENCODES // 2)),
        threading.Thread(target=encode, args=(status, ENCODES // 2)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert not wrong, f"{len(wrong)} bodies did not round-trip"
