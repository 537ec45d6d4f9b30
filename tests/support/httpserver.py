"""A threaded HTTP server on a free loopback port, for the servers tests own; relaying."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseRequestHandler
from typing import Any

import requests


@contextmanager
def serve(handler: Callable[..., BaseRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on 127.0.0.1; yields ``http://127.0.0.1:PORT``; stops on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port: Any = server.server_address[1]
        yield f"http://127.0.0.1:{port}"
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
