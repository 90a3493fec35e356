"""The publisher's view of its link between connections: reachability probes and suspends."""

from __future__ import annotations

import socket

import pytest

from canvoy.agent import publish
from canvoy.agent.publish import LinkWatch
from tests.conftest import free_port


def test_a_wait_ends_once_an_unreachable_broker_listens_again() -> None:
    port = free_port()
    watch = LinkWatch("127.0.0.1", port, 0.2)
    watch.waiting()
    assert not watch.back()  # nobody listens: keep waiting
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert watch.back()  # it was unreachable and now accepts connections


def test_a_reachable_broker_that_refused_never_cuts_a_wait_short() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        watch = LinkWatch("127.0.0.1", listener.getsockname()[1], 0.2)
        watch.waiting()  # e.g. the broker refused the certificate
        assert not watch.back()
        assert not watch.back()


def test_a_suspend_is_noticed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    offset = [100.0]
    monkeypatch.setattr(publish, "_suspend_offset", lambda: offset[0])
    watch = LinkWatch("127.0.0.1", free_port(), 0.2)
    assert watch.suspended_s() == 0.0
    offset[0] += 0.5  # clock noise, not a suspend
    assert watch.suspended_s() == 0.0
    offset[0] += 300.0  # the boot clock ran on while the machine slept
    assert watch.suspended_s() == 300.0
    assert watch.suspended_s() == 0.0
    offset[0] += 30.0
    watch.waiting()
    assert watch.back()  # a resume ends a back-off wait too
