"""A TCP relay in front of the broker that a test can cut and restore, like a cellular link."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.conftest import free_port


class LinkProxy:
    """Relays 127.0.0.1:``port`` to the broker's port.

    ``cut()`` is the link going away: new connections are refused and the open ones go silent
    (bytes are swallowed, nothing is closed, as on a dead radio link or a suspended laptop).
    ``restore()`` brings the link back; the stale connections are closed, as a NAT that timed
    them out would.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.accepted = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = threading.Event()
        self._listener: socket.socket | None = None
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return  # the listener was closed: the link is cut
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if self._cut.is_set():
                continue  # a dead link: what is sent is lost, and nobody is told
            try:
                dst.sendall(data)
            except OSError:
                break
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """The link goes away."""
        self._cut.set()
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone leaves the port bound
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def restore(self) -> None:
        """The link is back: stale connections are dropped and new ones relayed again."""
        self._drop()
        self._cut.clear()
        self._listen()

    def close(self) -> None:
        """Stop relaying."""
        self.cut()
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()
