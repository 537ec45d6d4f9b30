"""A loopback TCP proxy that counts every byte crossing it, each way (headers included).

Put in front of a registry (``run_counting_proxy(upstream_port)``), it
shows what a client really moved over the link: HTTP headers, manifests,
range reads and whole blobs alike.  It relays bytes as they come and
changes nothing.  Every connection is served by two threads (one per
direction); all are closed and joined when the proxy stops.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_BUFFER = 1 << 16


@dataclass
class Counted:
    """The proxy's address and what has crossed it so far."""

    port: int
    down: int = 0  # upstream -> client
    up: int = 0  # client -> upstream
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, direction: str, count: int) -> None:
        with self.lock:
            setattr(self, direction, getattr(self, direction) + count)


def _pump(source: socket.socket, sink: socket.socket, counted: Counted, direction: str) -> None:
    try:
        while data := source.recv(_BUFFER):
            sink.sendall(data)
            counted.add(direction, len(data))
    except OSError:
        pass  # either side went away: the other pump sees it too
    finally:
        # Tell the other side no more comes this way; it finishes its own direction.
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def run_counting_proxy(upstream_port: int) -> Iterator[Counted]:
    """Listen on a free loopback port, relaying to ``127.0.0.1:upstream_port``."""
    listener = socket.create_server(("127.0.0.1", 0))
    counted = Counted(listener.getsockname()[1])
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: stopping
            try:
                upstream = socket.create_connection(("127.0.0.1", upstream_port))
            except OSError:
                client.close()
                continue
            sockets.extend((client, upstream))
            counted.add("connections", 1)
            for source, sink, direction in ((client, upstream, "up"), (upstream, client, "down")):
                thread = threading.Thread(
                    target=_pump, args=(source, sink, counted, direction), daemon=True
                )
                thread.start()
                threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield counted
    finally:
        stopping.set()
        # Closing alone does not wake a thread blocked in accept(); shutting down does.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join()
