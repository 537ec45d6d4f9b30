"""A forward HTTP proxy on loopback, as a site's egress proxy is to the machines behind it.

It answers absolute-form requests (``GET http://host:port/path``) and
``CONNECT host:port`` tunnels, and resolves names from its own table only
(``hosts``: name -> a loopback address), so a client can reach a registry
by a name that nothing else resolves: the request can only have gone
through the proxy, and no name is ever looked up in DNS. With ``user`` set
it wants ``Proxy-Authorization`` (Basic) and answers 407 without it.
Every request is recorded as (method, target, authorized).
"""

from __future__ import annotations

import base64
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.support.httpserver import serve

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
               "trailer", "transfer-encoding", "upgrade"}  # fmt: skip


@dataclass
class ForwardProxy:
    hosts: dict[str, str]
    user: tuple[str, str] | None = None
    seen: list[tuple[str, str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def proxy_url(self) -> str:
        """The URL to put in ``http_proxy``/``https_proxy``, with the credentials."""
        if self.user is None:
            return self.url
        name, password = self.user
        return self.url.replace("://", f"://{name}:{password}@", 1)

    def targets(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(method, target) for method, target, _ in self.seen]

    def _record(self, method: str, target: str, authorized: bool) -> None:
        with self.lock:
            self.seen.append((method, target, authorized))

    def _authorized(self, header: str | None) -> bool:
        if self.user is None:
            return True
        wanted = base64.b64encode(":".join(self.user).encode()).decode()
        return header == f"Basic {wanted}"

    def _address(self, host: str, port: int) -> tuple[str, int] | None:
        address = self.hosts.get(host.lower())
        return None if address is None else (address, port)


@contextmanager
def run_forward_proxy(
    hosts: dict[str, str], user: tuple[str, str] | None = None
) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(dict(hosts), user)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _refuse(self, status: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

        def _admitted(self, target: str) -> bool:
            authorized = proxy._authorized(self.headers.get("Proxy-Authorization"))
            proxy._record(self.command, target, authorized)
            if not authorized:
                self._refuse(407, {"Proxy-Authenticate": 'Basic realm="test"'})
            return authorized

        def do_CONNECT(self) -> None:
            if not self._admitted(self.path):
                return
            host, _, port = self.path.rpartition(":")
            address = proxy._address(host, int(port))
            if address is None:
                self._refuse(502)
                return
            upstream = socket.create_connection(address, timeout=30)
            self.send_response(200, "Connection established")
            self.end_headers()
            self.close_connection = True
            _splice(self.connection, upstream)

        def _forward(self) -> None:
            if not self._admitted(self.path):
                return
            parts = urlsplit(self.path)
            address = proxy._address(parts.hostname or "", parts.port or 80)
            if parts.scheme != "http" or address is None:
                self._refuse(502)
                return
            upstream = socket.create_connection(address, timeout=30)
            with upstream:
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                lines = [f"{self.command} {target} HTTP/1.1"]
                lines += [f"{name}: {value}" for name, value in self.headers.items()
                          if name.lower() not in _HOP_BY_HOP]  # fmt: skip
                lines.append("Connection: close")
                upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                length = int(self.headers.get("Content-Length") or 0)
                while length:
                    piece = self.rfile.read(min(length, 1 << 16))
                    if not piece:
                        break
                    upstream.sendall(piece)
                    length -= len(piece)
                # Upstream closes after its answer: relay it as it comes.
                while piece := upstream.recv(1 << 16):
                    self.wfile.write(piece)
            self.close_connection = True

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    with serve(Handler) as url:
        proxy.url = url
        yield proxy


def _splice(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    with upstream:
        sockets = [client, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 60)
            if not readable:
                return
            for sock in readable:
                data = sock.recv(1 << 16)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
