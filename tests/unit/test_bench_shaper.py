"""The bench's shaping proxy when a client goes mid-response: nothing more crosses or counts."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
PIECE = b"x" * (64 << 10)
PIECES = 512  # 32 MiB: far more than loopback's socket buffers hold
RATE = 8e6  # 1 MB/s: the whole body would take half a minute


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ended: list[str]  # set per server: how each response's writing ended
    done: threading.Event

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(PIECE) * PIECES))
        self.end_headers()
        try:
            for _ in range(PIECES):
                self.wfile.write(PIECE)
            self.ended.append("whole")
        except OSError:
            self.ended.append("broken")
        finally:
            self.done.set()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def shaper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib.shaper

    yield benchlib.shaper
    for name in [n for n in sys.modules if n == "benchlib" or n.startswith("benchlib.")]:
        del sys.modules[name]


@pytest.fixture
def server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"ended": [], "done": threading.Event()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_client_that_closes_ends_the_upstream_response_and_its_count(
    shaper: Any, server: tuple[int, type[_Handler]]
) -> None:
    port, handler = server
    with shaper.shaping_proxy(port, rate=RATE, rtt=0.01) as link:
        with socket.create_connection(("127.0.0.1", link.port)) as client:
            client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            got = 0
            while got < 100_000:
                got += len(client.recv(1 << 16))
        # The registry hears the client is gone (its write fails) well before the body
        # would have crossed the link.
        assert handler.done.wait(10)
        assert handler.ended == ["broken"]
        counted = link.down.bytes
        time.sleep(0.5)  # half a MB more at this rate, were the proxy still draining
        assert link.down.bytes == counted
        # What the client got, its last piece or two at most besides: not the body.
        assert got <= counted < got + 4 * len(PIECE)
