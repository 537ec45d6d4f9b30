"""A threaded HTTP server on a free loopback port, for the servers tests own; relaying."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler
from typing import Any

import requests


@contextmanager
def serve(
    handler: Callable[..., BaseRequestHandler], *, tls: tuple[Path, Path] | None = None
) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1; yields ``http://127.0.0.1:PORT``; stops on exit.

    ``tls``: (certificate, key) to serve HTTPS with; then yields ``https://...``.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        # The handshake on the handler's thread, not in accept: a client
        # that refuses the certificate must not hold up the others.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port: Any = server.server_address[1]
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def relay(handler: BaseHTTPRequestHandler, answer: requests.Response, names: Sequence[str]) -> None:
    """Send an upstream's ``answer``, read whole, to ``handler``'s client.

    Its status, those of the headers ``names`` it has, and its body with
    its length.
    """
    handler.send_response(answer.status_code)
    for name in names:
        if name in answer.headers:
            handler.send_header(name, answer.headers[name])
    handler.send_header("Content-Length", str(len(answer.content)))
    handler.end_headers()
    handler.wfile.write(answer.content)
