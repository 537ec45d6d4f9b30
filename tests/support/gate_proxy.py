"""A loopback proxy in front of a registry that holds one blob's requests from a byte on.

For tests that take the registry away at a known point of a fetch: a
test closes the gate on blob ``digest`` from byte ``start`` (before byte
``end``), and every request for that blob whose Range starts there waits,
unanswered, until ``release``; ``arrived`` is set when the first one came,
so the test knows a fetch of those bytes is in flight without a clock.
Requests elsewhere in the blob (a mount reading its TOC at the end) and
for other paths go through.

An upstream that cannot be reached (the registry stopped) ends the
client's connection without an answer, as a relay on the registry's
machine would: the client sees the connection cut, a temporary failure.
``asked`` records the Range start and status of every request for the
blob (status 0: the upstream was not reached).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from tests.support.httpserver import serve

FORWARDED = ("Accept", "Authorization", "Range")
ANSWERED = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Docker-Content-Digest",
    "WWW-Authenticate",
    "Location",
    "Accept-Ranges",
)
HOLD_AT_MOST = 300.0  # seconds: a test that forgot to release cannot hang the proxy


@dataclass
class Gate:
    """Which requests wait, and what came through."""

    digest: str
    start: int
    end: int
    closed: bool = False
    arrived: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)
    asked: list[tuple[int | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        self.opened.clear()
        self.closed = True

    def release(self) -> None:
        self.closed = False
        self.opened.set()

    def starts(self, since: int = 0) -> list[int | None]:
        """The Range starts of the blob's requests (None: no Range), from record ``since`` on."""
        with self.lock:
            return [start for start, _ in self.asked[since:]]

    def mark(self) -> int:
        with self.lock:
            return len(self.asked)

    def _wait_if_held(self, path: str, start: int | None) -> None:
        if not self.closed or not path.endswith(f"/blobs/{self.digest}"):
            return
        if start is None or not self.start <= start < self.end:
            return
        self.arrived.set()
        self.opened.wait(HOLD_AT_MOST)

    def _record(self, path: str, start: int | None, status: int) -> None:
        if path.endswith(f"/blobs/{self.digest}"):
            with self.lock:
                self.asked.append((start, status))


def _range_start(header: str | None) -> int | None:
    if not header or not header.startswith("bytes="):
        return None
    first = header.removeprefix("bytes=").split("-", 1)[0]
    return int(first) if first.isdigit() else None


@contextmanager
def run_gate_proxy(upstream: str, gate: Gate) -> Iterator[str]:
    """Serve ``gate`` in front of registry ``upstream``; yields its host (``127.0.0.1:PORT``)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def do_GET(self) -> None:
            self._forward("GET")

        def _forward(self, method: str) -> None:
            start = _range_start(self.headers.get("Range"))
            gate._wait_if_held(self.path, start)
            sent = {k: v for k, v in self.headers.items() if k in FORWARDED}
            try:
                answer = requests.request(
                    method, upstream + self.path, headers=sent, allow_redirects=False, timeout=60
                )
            except requests.ConnectionError:
                gate._record(self.path, start, 0)
                self.close_connection = True  # no answer: the client sees the connection end
                return
            gate._record(self.path, start, answer.status_code)
            self.send_response(answer.status_code)
            for name in ANSWERED:
                if name in answer.headers and name != "Content-Length":
                    self.send_header(name, answer.headers[name])
            if method == "HEAD":
                self.send_header("Content-Length", answer.headers.get("Content-Length", "0"))
            else:
                self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            if method == "GET":
                self.wfile.write(answer.content)

    with serve(Handler) as url:
        try:
            yield url.removeprefix("http://")
        finally:
            gate.release()  # a held request ends before the server does
