"""The registry client's HTTP layer against a loopback server the test owns."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from providers.errors import BadImage, NotFound, TemporaryFailure, Unauthorized
from providers.manifest import METADATA_LIMIT
from providers.registry_auth import Credentials
from providers.registry_http import HttpOptions, RegistryHttp
from tests.support.httpserver import serve

ENDLESS = 256 << 20  # far past the limit: a client that read it all would take it all


class TokenFlood:
    """A registry whose token server answers with more bytes than any token has."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = threading.Event()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        flood = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/v2/"):
                    host = self.headers["Host"]
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(ENDLESS))
                self.end_headers()
                chunk = b"0" * (1 << 16)
                try:
                    while flood.sent < ENDLESS:
                        self.wfile.write(chunk)
                        flood.sent += len(chunk)
                except OSError:
                    pass  # the client hung up: what this test wants
                finally:
                    flood.done.set()

        return Handler


def test_an_oversized_token_answer_is_refused_without_reading_it_all() -> None:
    flood = TokenFlood()
    with serve(flood.handler()) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        with pytest.raises(Unauthorized, match="answer is too large"):
            http.get(f"{base}/v2/", image="x", scope=None)
        assert flood.done.wait(timeout=30)
    # The limit, plus what loopback socket buffers took before the hang-up.
    assert METADATA_LIMIT < flood.sent < METADATA_LIMIT + (32 << 20)


class TokenCutShort:
    """A token server whose first answer breaks off mid-body; a registry wanting its token."""

    def __init__(self) -> None:
        self.token_requests = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/v2/"):
                    granted = self.headers.get("Authorization") == "Bearer t"
                    self.send_response(200 if granted else 401)
                    if not granted:
                        host = self.headers["Host"]
                        self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                server.token_requests += 1
                body = b'{"token": "t"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.token_requests == 1:
                    self.wfile.write(body[:5])
                    self.close_connection = True  # the rest never comes
                    return
                self.wfile.write(body)

        return Handler


def test_a_token_answer_that_breaks_off_is_asked_for_again() -> None:
    server = TokenCutShort()
    with serve(server.handler()) as base:
        http = RegistryHttp(HttpOptions(attempts=3, backoff=0.0))
        response = http.get(f"{base}/v2/", image="x", scope=None)
        assert response.status_code == 200
    assert server.token_requests == 2


class TrickledError:
    """A registry that answers 500 and then sends its error body a byte at a time."""

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                try:
                    while not server.stopping.wait(0.05):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass  # the client hung up: what this test wants

        return Handler


def test_an_error_body_that_trickles_is_cut_at_the_speed_floor() -> None:
    server = TrickledError()
    with serve(server.handler()) as base:
        try:
            http = RegistryHttp(HttpOptions(attempts=1, min_speed=1024, min_speed_time=1))
            with pytest.raises(TemporaryFailure, match=r"^x: registry failed: HTTP 500 \("):
                http.get(f"{base}/v2/", image="x", scope=None)
        finally:
            server.stopping.set()


def _mislabelled(status: int) -> type[BaseHTTPRequestHandler]:
    """Answers ``status`` with a body that says gzip and is not."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"this is not gzip"
            self.send_response(status)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def test_an_error_body_that_does_not_decode_still_gives_the_status_s_error() -> None:
    with serve(_mislabelled(404)) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        with pytest.raises(NotFound, match=r"^x: not found: HTTP 404 \("):
            http.get(f"{base}/v2/", image="x", scope=None)


def test_a_body_that_does_not_decode_is_a_bad_image() -> None:
    with serve(_mislabelled(200)) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        response = http.get(f"{base}/v2/x/manifests/1", image="x", scope=None)
        with pytest.raises(BadImage, match="does not decode as its Content-Encoding says"):
            http.read_capped(response, METADATA_LIMIT)


def test_a_token_fetched_for_one_registry_never_goes_to_another_naming_its_realm() -> None:
    # A mirror answers 401 with the origin's challenge (its realm and service).
    # The token the origin's credentials got must not be what the mirror is sent.
    seen: dict[str, list[str]] = {"origin": [], "mirror": []}

    def registry(name: str, realm: list[str], wanted: str) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                sent = self.headers.get("Authorization", "")
                seen[name].append(sent)
                ok = sent.startswith(wanted)
                self.send_response(200 if ok else 401)
                if not ok:
                    self.send_header("WWW-Authenticate", f'Bearer realm="{realm[0]}",service="hub"')
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler

    class TokenServer(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            # The secret token only for the origin's credentials.
            basic = self.headers.get("Authorization", "").startswith("Basic ")
            body = json.dumps({"token": "SECRET" if basic else "ANONYMOUS"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    realm: list[str] = []
    with (
        serve(TokenServer) as tokens,
        serve(registry("origin", realm, "Bearer SECRET")) as origin,
        serve(registry("mirror", realm, "Bearer ")) as mirror,
    ):
        realm.append(f"{tokens}/token")
        host = origin.removeprefix("http://")
        http = RegistryHttp(HttpOptions(attempts=1, credentials={host: Credentials("me", "pw")}))
        scope = "repository:private/app:pull"
        for base in (origin, mirror, origin, mirror):
            http.get(f"{base}/v2/private/app/manifests/1", image="i", scope=scope).close()
    assert "Bearer SECRET" in seen["origin"]
    assert seen["mirror"] and "Bearer SECRET" not in seen["mirror"]
    assert "Bearer ANONYMOUS" in seen["mirror"]


@pytest.mark.parametrize(
    "location", ["ftp://mirror.example/blob", "/v2/loop", "http://[bad"], ids=["ftp", "loop", "bad"]
)
def test_a_redirect_that_leads_nowhere_is_a_one_line_failure_of_that_host(location: str) -> None:
    # A mirror's such answer must be an error the client passes over to the
    # next endpoint, not an exception of the HTTP library's that ends the pull.
    class Redirecting(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serve(Redirecting) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        with pytest.raises(BadImage, match="answered with nowhere to go") as failed:
            http.get(f"{base}/v2/x/manifests/1", image="img", scope=None)
    assert "\n" not in str(failed.value)
