"""A threaded HTTP server on a free loopback port, for the servers tests own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from socketserver import BaseRequestHandler
from typing import Any


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
