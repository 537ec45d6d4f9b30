"""A loopback HTTP proxy in front of a registry that misbehaves on request.

Each fault applies to requests whose path contains ``Faults.target`` and
is used up as it fires, so a test says "the next two blob requests get 500"
and then watches the client recover. Every request is recorded with its
headers (``seen``), which lets tests check what a client sent where.

Slow faults: ``silent`` takes the connection and never answers, ``stalls``
sends half the body and then nothing, ``trickle`` sends the body a byte per
``trickle_interval`` seconds (at most ``trickle_limit`` bytes, then cuts),
``trickle_headers`` sends a status line and endless headers a byte per
``trickle_interval`` seconds, so no single read ever waits long.
Each holds its connection until the client hangs up (``hung_up`` is set)
or the proxy stops. ``asked`` and ``trickled`` tell a test, without
waiting on a clock, that a matching request arrived and that a trickle has
begun.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

from tests.support.httpserver import serve

FORWARDED = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Docker-Content-Digest",
    "WWW-Authenticate",
    "Location",
)


@dataclass
class Faults:
    target: str = "/blobs/"
    statuses: list[int] = field(default_factory=list)  # answered in order, then forwarded
    cuts: int = 0  # responses cut after half the body
    ignore_range: bool = False  # forward without Range: upstream answers 200, whole body
    corrupt: bool = False  # flip one byte of every matching body
    corruptions: int = 0  # flip one byte of the next N matching bodies
    silent: int = 0  # the next N matching requests get no answer at all
    stalls: int = 0  # the next N matching bodies stop after half
    trickle: int = 0  # the next N matching bodies come a byte at a time
    trickle_headers: int = 0  # the next N matching requests get headers a byte at a time
    trickle_interval: float = 0.05
    trickle_limit: int | None = None  # bytes a trickle sends before it cuts
    retry_after: str = "0"  # sent with injected statuses
    asked: threading.Event = field(default_factory=threading.Event)
    trickled: threading.Event = field(default_factory=threading.Event)
    hung_up: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    garbage_manifest: bool = False
    redirect_to: str | None = None  # base URL to redirect matching requests to, once each
    upstream_auth: str | None = None  # Authorization the redirect target adds by itself
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, name: str) -> Any:
        """Use up one fault called ``name``; returns what it was (falsy if none left)."""
        with self.lock:
            value = getattr(self, name)
            if name == "statuses":
                return value.pop(0) if value else 0
            if name in ("cuts", "corruptions", "silent", "stalls", "trickle", "trickle_headers"):
                if value:
                    setattr(self, name, value - 1)
                return value
            return value


def trickle_headers(connection: socket.socket, faults: Faults) -> None:
    """Send a status line and headers that never end, a byte per ``trickle_interval``.

    Ends when the client hangs up (``hung_up`` is set) or the proxy stops.
    """
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    pad = 0
    try:
        while True:
            for i in range(len(head)):
                connection.sendall(head[i : i + 1])
                faults.trickled.set()
                if faults.stopping.wait(faults.trickle_interval):
                    return
            pad += 1
            head = f"X-Pad-{pad}: x\r\n".encode()
    except OSError:
        faults.hung_up.set()


@contextmanager
def run_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """Serve on a free loopback port; yields the proxy's base URL."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            headers = {k: v for k, v in self.headers.items()}
            with faults.lock:
                faults.seen.append((self.path, headers))
            matches = faults.target in self.path
            if matches:
                faults.asked.set()
                if faults.take("silent"):
                    self._hold()
                    return
                if faults.take("trickle_headers"):
                    trickle_headers(self.connection, faults)
                    return
            if "/manifests/" in self.path and faults.garbage_manifest:
                self._answer(200, b"this is not JSON", "application/vnd.oci.image.manifest.v1+json")
                return
            if matches and (status := faults.take("statuses")):
                error = json.dumps({"errors": [{"code": "INJECTED", "message": f"fault {status}"}]})
                retry = {"Retry-After": faults.retry_after}
                self._answer(status, error.encode(), "application/json", retry)
                return
            host = self.headers.get("Host", "")
            if matches and faults.redirect_to and not host.startswith("localhost"):
                self._answer(307, b"", "text/plain", {"Location": faults.redirect_to + self.path})
                return
            sent = {k: v for k, v in headers.items() if k in ("Accept", "Authorization", "Range")}
            if faults.ignore_range:
                sent.pop("Range", None)
            if host.startswith("localhost") and faults.upstream_auth:
                sent["Authorization"] = faults.upstream_auth
            upstream_response = requests.get(
                upstream + self.path, headers=sent, stream=True, allow_redirects=False, timeout=30
            )
            body = upstream_response.raw.read()
            corrupt = matches and (faults.corrupt or faults.take("corruptions"))
            if corrupt and len(body) > 1:
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
            self.send_response(upstream_response.status_code)
            for name in FORWARDED:
                if name in upstream_response.headers:
                    self.send_header(name, upstream_response.headers[name])
            self.end_headers()
            sending = matches and upstream_response.status_code in (200, 206)
            if sending and faults.take("cuts"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self._cut()
                return
            if sending and faults.take("stalls"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self._hold()
                return
            if sending and faults.take("trickle"):
                self._trickle(body)
                return
            self.wfile.write(body)

        def _cut(self) -> None:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def _hold(self) -> None:
            """Say nothing more until the client hangs up or the proxy stops."""
            self.close_connection = True
            self.connection.settimeout(0.1)  # to notice the proxy stopping
            while not faults.stopping.is_set():
                try:
                    if not self.connection.recv(1 << 16):
                        faults.hung_up.set()
                        return
                except TimeoutError:
                    continue
                except OSError:
                    faults.hung_up.set()
                    return

        def _trickle(self, body: bytes) -> None:
            limit = len(body) if faults.trickle_limit is None else faults.trickle_limit
            try:
                for i in range(min(limit, len(body))):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    faults.trickled.set()
                    if faults.stopping.wait(faults.trickle_interval):
                        break
            except OSError:
                faults.hung_up.set()
                return
            self._cut()

        def _answer(
            self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    with serve(Handler) as url:
        try:
            yield url
        finally:
            faults.stopping.set()  # let held connections go, so the server can stop
