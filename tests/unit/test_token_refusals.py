"""A token server that answers with no token is a refusal, not a registry out of reach.

A registry asks for a bearer token (401 with a ``Bearer`` challenge); its
token server answers 400, 404 or 405. Asking again changes nothing, so it is
Unauthorized, asked once: a start holding a lazily pulled image must not take
it for an outage and start the stored image (``still_named``), nor background
fetch wait on it for a quarter of an hour. 429 and 5xx are still temporary,
asked again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from providers.errors import TemporaryFailure, Unauthorized
from providers.registry import RegistryClient, RegistryOptions
from providers.registry_http import HttpOptions


@contextmanager
def _registry(token_status: int) -> Iterator[tuple[str, list[str]]]:
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            host = self.headers["Host"]
            if self.path.startswith("/token"):
                self.send_response(token_status)
            else:
                self.send_response(401)
                self.send_header("WWW-Authenticate",
                                 f'Bearer realm="http://{host}/token",service="test"')  # fmt: skip
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _client(host: str) -> RegistryClient:
    http = HttpOptions(backoff=0.01, max_backoff=0.05)
    return RegistryClient(RegistryOptions(registry=f"http://{host}", http=http))


@pytest.mark.parametrize("status", [400, 404, 405])
def test_a_token_server_giving_none_is_unauthorized_asked_once(status: int) -> None:
    refused = pytest.raises(Unauthorized, match=f"answered HTTP {status}")
    with _registry(status) as (host, asked), refused:
        _client(host).resolve(f"{host}/app:1")
    assert len([p for p in asked if p.startswith("/token")]) == 1, asked


def test_a_failing_token_server_is_still_temporary_and_asked_again() -> None:
    with _registry(503) as (host, asked), pytest.raises(TemporaryFailure):
        _client(host).resolve(f"{host}/app:1")
    assert len([p for p in asked if p.startswith("/token")]) > 1, asked
