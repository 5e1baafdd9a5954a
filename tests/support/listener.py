"""A TCP listener that answers nothing and records who connected: point a program's servers
(Redis, PostgreSQL, an AWS endpoint, the API) at it to prove that the program never tried."""

from __future__ import annotations

import contextlib
import socket
import threading


class ConnectionRecorder:
    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._socket.accept()
            except OSError:  # closed by stop()
                return
            with self._lock:
                self.peers.append(peer)
            conn.close()

    def connections(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.peers)

    def __enter__(self) -> ConnectionRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the blocked accept() (close() alone does not, on Linux).
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
