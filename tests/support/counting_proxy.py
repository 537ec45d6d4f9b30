"""A loopback proxy in front of a registry that counts what crosses it, and can spoil or hold it.

It stands for the link between a machine and its registry: point an image
reference at its host (``127.0.0.1:PORT/name:tag``) and every request the
provisioner, the mounts and the cache daemon make for that image goes
through it. Each answer is recorded as an ``Exchange`` (method, path, Range
header, status, body bytes sent), so a test measures bytes over the link
and counts requests per blob.

Faults, set by the test while it runs:

- ``corrupt(digest, offset, times)``: the next ``times`` answers for blob
  ``digest`` whose body covers blob byte ``offset`` have that byte flipped
  (``times=None``: every such answer). The position is taken from the
  answer's ``Content-Range`` (or 0 for a whole body), so a test aims at one
  file's compressed bytes.
- ``hold(digest)``: requests for blob ``digest`` wait, unanswered, until
  ``release``; ``held`` counts those that arrived, so a test knows a fetch
  is in flight without a clock.

Bodies are streamed through in pieces, never buffered whole.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from tests.support.httpserver import serve

FORWARDED_HEADERS = ("Accept", "Authorization", "Range")
ANSWER_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Docker-Content-Digest",
    "WWW-Authenticate",
    "Location",
    "Accept-Ranges",
)
_PIECE = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/")


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    range: str
    status: int
    sent: int  # body bytes sent to the client


@dataclass
class _Corruption:
    digest: str
    offset: int
    times: int | None
    done: int = 0


@dataclass
class CountingProxy:
    """What crossed the proxy, and the faults it is told to make."""

    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _corruptions: list[_Corruption] = field(default_factory=list)
    _held: set[str] = field(default_factory=set)
    _holding: threading.Condition = field(default_factory=threading.Condition)
    _arrived: dict[str, int] = field(default_factory=dict)
    stopping: bool = False

    # Counting

    def mark(self) -> int:
        """A point in the record: pass it as ``since`` to count only what came later."""
        with self.lock:
            return len(self.exchanges)

    def select(
        self, keep: Callable[[Exchange], bool] = lambda e: True, since: int = 0
    ) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges[since:] if keep(e)]

    def blob_bytes(self, digests: tuple[str, ...] | list[str], since: int = 0) -> int:
        """Body bytes sent for these blobs."""
        return sum(e.sent for e in self.select(lambda e: _blob_of(e.path) in digests, since))

    def blob_requests(self, digests: tuple[str, ...] | list[str], since: int = 0) -> int:
        return len(self.select(lambda e: _blob_of(e.path) in digests, since))

    def total_bytes(self, since: int = 0) -> int:
        return sum(e.sent for e in self.select(since=since))

    # Faults

    def corrupt(self, digest: str, offset: int, times: int | None = 1) -> None:
        with self.lock:
            self._corruptions.append(_Corruption(digest, offset, times))

    def corrupted(self) -> int:
        """How many answers had a byte flipped so far."""
        with self.lock:
            return sum(c.done for c in self._corruptions)

    def hold(self, digest: str) -> None:
        with self._holding:
            self._held.add(digest)

    def release(self) -> None:
        with self._holding:
            self._held.clear()
            self._holding.notify_all()

    def held(self, digest: str) -> int:
        """How many requests for ``digest`` arrived while it was held."""
        with self._holding:
            return self._arrived.get(digest, 0)

    def _wait_if_held(self, digest: str | None) -> None:
        with self._holding:
            if digest is None or digest not in self._held:
                return
            self._arrived[digest] = self._arrived.get(digest, 0) + 1
            # Bounded only so that a test that forgot to release cannot hang the proxy.
            self._holding.wait_for(lambda: digest not in self._held or self.stopping, 300)

    def _flip_at(self, digest: str | None, first: int, last: int) -> int | None:
        """Where in this body to flip a byte (an index into it), using up one corruption."""
        if digest is None:
            return None
        with self.lock:
            for fault in self._corruptions:
                if fault.digest != digest or not first <= fault.offset <= last:
                    continue
                if fault.times is not None and fault.done >= fault.times:
                    continue
                fault.done += 1
                return fault.offset - first
        return None


def _blob_of(path: str) -> str | None:
    _, found, rest = path.partition("/blobs/")
    return rest.split("?")[0] if found else None


@contextmanager
def run_counting_proxy(upstream: str, proxy: CountingProxy) -> Iterator[str]:
    """Serve ``proxy`` in front of registry ``upstream``; yields its host (``127.0.0.1:PORT``)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._forward("HEAD")

        def do_GET(self) -> None:
            self._forward("GET")

        def _forward(self, method: str) -> None:
            digest = _blob_of(self.path)
            proxy._wait_if_held(digest)
            sent_headers = {k: v for k, v in self.headers.items() if k in FORWARDED_HEADERS}
            answer = requests.request(
                method, upstream + self.path, headers=sent_headers, stream=True,
                allow_redirects=False, timeout=60,
            )  # fmt: skip
            with answer:
                first, last = 0, -1
                if found := _CONTENT_RANGE.match(answer.headers.get("Content-Range", "")):
                    first, last = int(found[1]), int(found[2])
                elif "Content-Length" in answer.headers:
                    last = int(answer.headers["Content-Length"]) - 1
                flip = proxy._flip_at(digest, first, last) if method == "GET" else None
                self.send_response(answer.status_code)
                for name in ANSWER_HEADERS:
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                if "Content-Length" not in answer.headers:
                    self.close_connection = True
                self.end_headers()
                sent = 0
                try:
                    if method == "GET":
                        for piece in answer.raw.stream(_PIECE, decode_content=False):
                            if flip is not None and sent <= flip < sent + len(piece):
                                at = flip - sent
                                piece = piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1 :]
                            self.wfile.write(piece)
                            sent += len(piece)
                finally:
                    with proxy.lock:
                        proxy.exchanges.append(
                            Exchange(method, self.path, self.headers.get("Range", ""),
                                     answer.status_code, sent)
                        )  # fmt: skip

    with serve(Handler) as url:
        try:
            yield url.removeprefix("http://")
        finally:
            with proxy._holding:
                proxy.stopping = True
                proxy._holding.notify_all()
