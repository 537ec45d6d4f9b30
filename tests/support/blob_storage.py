"""Blob storage behind a registry, as S3 sits behind registries that redirect: both on loopback.

- ``Storage``: serves blobs at ``/blobs/DIGEST?QUERY`` (any query: a signed
  URL's), answering Range requests with 206 as object stores do, and
  records every request with its headers. ``refuse`` answers the next N
  requests 403, as an expired signed URL is answered.
- ``Front``: forwards everything to a real registry, except GETs of the
  ``target`` blob, which it answers as its ``mode`` says:

      redirect  an authenticated GET gets a 307 to the storage (``storage``
                base URL, ``query`` as the signature), as a registry backed
                by object storage answers
      whole     200 with the whole blob (``data``) whatever the Range, sent
                in slices of it so the server holds no copy
      range     206 with the bytes asked for but ``content_range`` as the
                Content-Range

  It records the requests it saw.

The storage is served under the name ``localhost`` and the front under
``127.0.0.1``: two hosts, as a registry and its storage are.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import requests

from tests.support.httpserver import serve

_RANGE = re.compile(r"bytes=(\d+)-(\d+)")
FORWARDED = ("Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest",
             "WWW-Authenticate", "Location")  # fmt: skip


@dataclass
class Storage:
    blobs: dict[str, bytes]
    refuse: int = 0  # answer the next N requests 403
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Front:
    target: str  # the blob digest answered by ``mode``
    mode: str = "redirect"
    storage: str = ""  # the storage's base URL
    query: str = "X-Amz-Signature=0123abcd"
    data: bytes = b""  # the target blob, for "whole" and "range"
    content_range: str = ""
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def blob_requests(self) -> int:
        with self.lock:
            return sum(1 for path, _ in self.seen if f"/blobs/{self.target}" in path)


def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.end_headers()
    handler.wfile.write(body)


@contextmanager
def run_storage(storage: Storage, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Serve ``storage``; yields its base URL, ``http://localhost:PORT``.

    ``tls``: (certificate, key) to serve it over HTTPS (``https://localhost:PORT``).
    """

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            with storage.lock:
                storage.seen.append((self.path, dict(self.headers.items())))
                refused = storage.refuse > 0
                storage.refuse -= 1 if refused else 0
            if refused:
                _answer(self, 403, b"<Error><Code>AccessDenied</Code></Error>")
                return
            digest = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
            data = storage.blobs.get(digest)
            if data is None:
                _answer(self, 404, b"<Error><Code>NoSuchKey</Code></Error>")
                return
            match = _RANGE.fullmatch(self.headers.get("Range", ""))
            if match is None:
                _answer(self, 200, data)
                return
            first, last = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
            content_range = f"bytes {first}-{last}/{len(data)}"
            _answer(self, 206, data[first : last + 1], Content_Range=content_range)

    with serve(Handler, tls=tls) as url:
        yield url.replace("127.0.0.1", "localhost")


@contextmanager
def run_front(upstream: str, front: Front) -> Iterator[str]:
    """Serve ``front`` before the registry at ``upstream``; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("HEAD")

        def _handle(self, method: str) -> None:
            with front.lock:
                front.seen.append((self.path, dict(self.headers.items())))
            if method == "GET" and f"/blobs/{front.target}" in self.path:
                if front.mode == "whole":
                    self._whole()
                    return
                if front.mode == "range":
                    match = _RANGE.fullmatch(self.headers.get("Range", ""))
                    assert match is not None, "the range mode wants range requests"
                    body = front.data[int(match.group(1)) : int(match.group(2)) + 1]
                    _answer(self, 206, body, Content_Range=front.content_range)
                    return
                if "Authorization" in self.headers:
                    location = f"{front.storage}/blobs/{front.target}?{front.query}"
                    _answer(self, 307, b"", Location=location)
                    return
            sent = {
                k: v for k, v in self.headers.items() if k in ("Accept", "Authorization", "Range")
            }
            response = requests.request(
                method, upstream + self.path, headers=sent, allow_redirects=False, timeout=30
            )
            self.send_response(response.status_code)
            for name in FORWARDED:
                if name in response.headers:
                    self.send_header(name, response.headers[name])
            self.end_headers()
            if method == "GET":
                self.wfile.write(response.content)

        def _whole(self) -> None:
            view = memoryview(front.data)
            self.send_response(200)
            self.send_header("Content-Length", str(len(view)))
            self.end_headers()
            try:
                for start in range(0, len(view), 1 << 16):
                    self.wfile.write(view[start : start + (1 << 16)])
            except OSError:
                pass  # the client had what it wanted and hung up

    with serve(Handler) as url:
        yield url
