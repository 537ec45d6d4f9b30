"""A request's header deadline, where TLS runs: a handshake dripped out, and a tunnel.

A handshake: each byte the server sends would renew a per-read timeout,
yet the handshake ends by the deadline, the watchdog's or its own
(``send`` gives the socket the same seconds, and CPython's TLS calls count
a timeout for the whole call). The server answers the client's hello with
the header of a long TLS record, then one byte of it every 0.2 s for 40 s,
and says when the client cut it off.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import requests
from urllib3.util.ssltransport import SSLTransport

from providers.http_session import Watch, new_session, send

RECORD = b"\x16\x03\x03\x40\x00"  # a handshake record of 16 KiB: the client waits for all of it
DRIPS = 200
DRIP = 0.2


def test_a_handshake_dripped_out_is_cut_at_the_deadline() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    sent: list[int] = []  # bytes of the record sent before the client cut the connection
    done = threading.Event()

    def server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # the client's hello
            count = 0
            try:
                conn.sendall(RECORD)
                while count < DRIPS and not done.is_set():
                    conn.sendall(b"\x00")
                    count += 1
                    time.sleep(DRIP)  # the server's pace, not a wait for the client
            except OSError:
                pass  # cut by the client
            sent.append(count)

    thread = threading.Thread(target=server)
    thread.start()
    try:
        # Which of the two deadlines ends it first is the machine's to say.
        with pytest.raises(requests.RequestException):
            send(new_session(False), "GET", f"https://127.0.0.1:{port}/v2/", seconds=1.0)
        thread.join(DRIPS * DRIP + 30)
    finally:
        done.set()
        with contextlib.suppress(OSError):
            listener.close()
        thread.join(60)
    # Cut long before the record was all sent: by the deadline, not by the server's pace.
    assert sent and sent[0] < DRIPS // 4


def test_a_watch_cuts_a_connection_tunnelled_through_an_https_proxy() -> None:
    """There the connection's socket is urllib3's ``SSLTransport``, which keeps the socket
    it runs on as ``socket``: the watchdog shuts that one down."""
    ours, theirs = socket.socketpair()
    transport = SSLTransport.__new__(SSLTransport)  # no handshake: only its socket is used
    transport.socket = ours
    watch = Watch(0.0)
    with ours, theirs:
        watch.add(transport)  # type: ignore[arg-type]
        watch.start()
        theirs.settimeout(30)
        assert theirs.recv(1) == b""  # our side shut down: an end of stream here
        assert watch.disarm()
