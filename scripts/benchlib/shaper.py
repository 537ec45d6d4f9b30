"""A shaping TCP proxy on loopback: one link of a given bandwidth and round trip, counted.

The cold-start measurement puts it in front of a loopback ``docker-registry``
so every contender pulls over the same kind of link a registry across a
network gives: ``rate`` bits per second each way, shared by all the
connections a client opens (as one access link is), ``rtt`` seconds of round
trip, and a round trip before a new connection carries its first byte (the
TCP handshake).  It counts the bytes that cross it, each way.

How: for each connection and direction, a reader thread takes bytes as the
sender writes them and stamps them; a writer thread hands them on once the
direction's link has serialized them (``rate``) and half the round trip has
passed, and tells ``Shaper.heard`` (``benchlib.timeline``) what it handed
on.  The queue between them is bounded, so a fast sender is held back by
TCP's own flow control, as on a real link, and the proxy never holds more
than ``_QUEUE`` pieces of a connection.  Bytes are counted once handed
on.  When one end goes (a client that closes mid-response), the other is
shut down and what was still queued for the gone end is dropped, neither
sent over the link nor counted, as a real link would carry no more of it.
Not modelled: loss, TCP slow start.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from benchlib.timeline import Recorder

_PIECE = 16 * 1024  # bytes read at a time: small enough to pace smoothly
_QUEUE = 64  # pieces in flight per connection and direction (1 MiB)
_END = b""


@dataclass
class Link:
    """One direction of the link: when it is free next, and what has crossed it."""

    rate: float  # bits per second
    free_at: float = 0.0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, size: int, ready: float) -> float:
        """When ``size`` bytes that reach the link at ``ready`` have left it (not counted yet:
        ``delivered``)."""
        with self.lock:
            start = max(self.free_at, ready)
            self.free_at = start + size * 8 / self.rate
            return self.free_at

    def delivered(self, size: int) -> None:
        """Count ``size`` bytes that crossed: handed on to the receiver."""
        with self.lock:
            self.bytes += size


@dataclass
class Shaper:
    """The proxy's port and its two links."""

    port: int
    rtt: float
    down: Link  # upstream -> client
    up: Link  # client -> upstream
    heard: Recorder = field(default_factory=Recorder)  # every request, for timelines

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def crossed(self) -> int:
        """Bytes over the link so far, both ways."""
        return self.down.bytes + self.up.bytes


def _read(source: socket.socket, pieces: queue.Queue[tuple[bytes, float]]) -> None:
    try:
        while data := source.recv(_PIECE):
            pieces.put((data, time.perf_counter()))
    except OSError:
        pass  # reset or shut down: the end of this direction
    pieces.put((_END, time.perf_counter()))


def _write(
    sink: socket.socket,
    source: socket.socket,
    pieces: queue.Queue[tuple[bytes, float]],
    link: Link,
    delay: float,
    heard: Callable[[bytes, float, float], None],
) -> None:
    """Hand ``source``'s pieces on to ``sink`` as the link delivers them.

    Once ``sink`` is gone (the client closed), ``source`` is shut down, so
    the sender stops, and what is still queued is dropped: not sent over
    the link, not waited for, not counted.
    """
    broken = False
    while True:
        data, ready = pieces.get()
        if data is _END or not data:
            break
        if broken:
            continue  # keep draining, so the reader is never stuck on a full queue
        arrive = link.send(len(data), ready) + delay
        pause = arrive - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        heard(data, ready, arrive)
        try:
            sink.sendall(data)
        except OSError:
            broken = True
            with contextlib.suppress(OSError):
                source.shutdown(socket.SHUT_RDWR)  # its reader ends, its sender hears a reset
            continue
        link.delivered(len(data))
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def shaping_proxy(upstream_port: int, *, rate: float, rtt: float) -> Iterator[Shaper]:
    """A proxy on a free loopback port to ``127.0.0.1:upstream_port``; stopped on exit.

    ``rate`` in bits per second each way, ``rtt`` in seconds.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    shaper = Shaper(listener.getsockname()[1], rtt, Link(rate), Link(rate))
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []
    lock = threading.Lock()

    def start(target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        with lock:
            threads.append(thread)

    def connect(client: socket.socket, number: int) -> None:
        time.sleep(rtt)  # the handshake a real link costs before the first byte
        try:
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
        except OSError:
            client.close()
            return
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            sockets.append(upstream)
        ways = ((client, upstream, shaper.up, shaper.heard.up),
                (upstream, client, shaper.down, shaper.heard.down))  # fmt: skip
        for source, sink, link, heard in ways:
            pieces: queue.Queue[tuple[bytes, float]] = queue.Queue(_QUEUE)
            start(_read, source, pieces)
            start(_write, sink, source, pieces, link, rtt / 2, functools.partial(heard, number))

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # shut down: stopping
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with lock:
                sockets.append(client)
            start(connect, client, shaper.heard.connection(time.perf_counter()))

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield shaper
    finally:
        # Closing alone does not wake a thread blocked in accept(); shutting down does.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join()
        with lock:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            running = list(threads)
        for thread in running:
            thread.join(timeout=10)
        for sock in sockets:
            sock.close()
