"""A registry client's requests keep to the connections they have.

A new connection costs a round trip (three, with TLS) before its request
goes out, and a lazy start pays each on its way to its first byte. Two
ways one was lost, each shown against a fake registry on loopback that
says which connection each request came on:

- An answer of 404 closed unread (Debian's ``docker-registry`` answers the
  Referrers API so, with a JSON error body, and an image with no referrers
  tag too) closed its connection with it.
- Each thread had a pool of connections of its own: a request on another
  thread than the one before (a provision hops between trio's worker
  threads) opened a new one beside the idle one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from providers.digest import Digest
from providers.http_session import HeadersTimeout, connection_pools, new_session, send
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.referrers import list_referrers, referrers_tag
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.httpserver import serve

SUBJECT = Digest("sha256:" + "a" * 64)
REFERRER = Digest("sha256:" + "b" * 64)
NOT_FOUND = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]})


@dataclass
class Seen:
    """Each request's path and the client port it came from, in order."""

    requests: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tag: bytes | None = None  # the referrers tag's index; None: 404

    def ports(self) -> set[int]:
        with self.lock:
            return {port for _, port in self.requests}


def _handler(seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # connections kept, as a registry keeps them

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:
            with seen.lock:
                seen.requests.append((self.path, self.client_address[1]))
            if self.path == f"/v2/app/manifests/{referrers_tag(SUBJECT)}" and seen.tag:
                self._answer(200, seen.tag, OCI_INDEX)
            else:
                self._answer(404, NOT_FOUND.encode(), "application/json")

        do_HEAD = do_GET

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[Seen, RegistryPush]]:
    seen = Seen()
    with serve(_handler(seen)) as url:
        yield seen, RegistryPush(RegistryHttp(HttpOptions()), url, "app", "app:1")


def test_no_referrers_api_and_no_tag_take_one_connection(
    registry: tuple[Seen, RegistryPush],
) -> None:
    seen, push = registry
    assert list_referrers(push, SUBJECT) == ()
    assert push.get_manifest("1", OCI_MANIFEST) is None  # the next request after the lookup
    assert not push.has_blob(REFERRER)
    assert push.get_manifest("2", OCI_MANIFEST) is None
    assert [path for path, _ in seen.requests] == [
        f"/v2/app/referrers/{SUBJECT}",
        f"/v2/app/manifests/{referrers_tag(SUBJECT)}",
        "/v2/app/manifests/1",
        f"/v2/app/blobs/{REFERRER}",
        "/v2/app/manifests/2",
    ]
    assert len(seen.ports()) == 1


def test_a_listing_through_the_tag_keeps_its_connection(
    registry: tuple[Seen, RegistryPush],
) -> None:
    seen, push = registry
    entry = {"mediaType": OCI_MANIFEST, "digest": REFERRER, "size": 10, "artifactType": "x/y"}
    seen.tag = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    ).encode()
    assert [r.digest for r in list_referrers(push, SUBJECT)] == [REFERRER]
    assert push.get_manifest("1", OCI_MANIFEST) is None
    assert len(seen.requests) == 3
    assert len(seen.ports()) == 1


def test_a_connection_one_thread_left_serves_the_next(
    registry: tuple[Seen, RegistryPush],
) -> None:
    seen, push = registry

    got: list[object] = []

    def ask(name: str) -> None:
        try:
            got.append(push.get_manifest(name, OCI_MANIFEST))
        except BaseException as error:
            got.append(error)

    for name in ("1", "2", "3"):
        thread = threading.Thread(target=ask, args=(name,))
        thread.start()
        thread.join()
    assert got == [None, None, None]
    assert len(seen.requests) == 3
    assert len(seen.ports()) == 1


def test_a_deadline_never_cuts_a_connection_another_thread_took_from_the_pools() -> None:
    """A's request is redirected, and its first connection goes back to the shared pools;
    B's request takes it. A's deadline passes at the redirect's target, and its watchdog
    shuts down the sockets it sends on: not B's, whose body then arrives whole."""
    at_target, release = threading.Event(), threading.Event()
    body = b"x" * 100_000
    ports: list[tuple[str, int]] = []

    class First(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            ports.append((self.path, self.client_address[1]))
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"{second}/slow")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            release.wait(60)  # a bound, not a delay: set once A's deadline has passed
            self.wfile.write(body)

    class Second(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            at_target.set()
            release.wait(60)  # never answers before A's deadline

    pools = connection_pools()
    failed: list[BaseException] = []

    def first_thread() -> None:
        try:
            send(new_session(True, pools), "GET", f"{first}/redirect", seconds=2.0)
        except BaseException as error:
            failed.append(error)

    with serve(Second) as second, serve(First) as first:
        a = threading.Thread(target=first_thread)
        a.start()
        try:
            assert at_target.wait(60)
            response = send(new_session(True, pools), "GET", f"{first}/body", seconds=60)
            a.join(60)
            assert [type(error) for error in failed] == [HeadersTimeout]  # A's watchdog fired
            release.set()
            got = response.raw.read()
        finally:
            release.set()
            a.join(60)
            pools.close()
    assert [path for path, _ in ports] == ["/redirect", "/body"]
    assert ports[0][1] == ports[1][1]  # B's request went on A's first connection
    assert got == body
