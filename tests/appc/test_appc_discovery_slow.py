"""Simple discovery over HTTP ends a body that crawls, notices cancellation while
one trickles in, and tries again only what may get better."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import trio

from providers.appc_source import AppcDiscoverySource
from providers.appc_store import AppcStore
from providers.errors import BadImage, TemporaryFailure
from providers.http_session import new_session
from providers.registry_options import HttpOptions
from tests.support.acis import aci_bytes, manifest_doc
from tests.support.httpserver import serve

ACI = aci_bytes(manifest_doc("example.com/web"), {"index.html": b"hello\n"}, compression="none")
# How many bytes a trickle sends at most: a bound on a test that fails.
MOST = 400


class Trickle:
    """A server that sends the ACI's headers and then one byte every 50 ms.

    It stops when the client hangs up (``hung_up`` is then set), when
    ``stop`` is set, or after ``MOST`` bytes; ``started`` is set after the
    first few bytes, ``done`` when it stopped.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.hung_up = threading.Event()
        self.done = threading.Event()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                trickle.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(ACI)))
                self.end_headers()
                try:
                    for sent in range(MOST):
                        self.wfile.write(ACI[sent : sent + 1])
                        self.wfile.flush()
                        if sent == 3:
                            trickle.started.set()
                        if trickle.stop.wait(0.05):
                            break
                except OSError:  # EPIPE, ECONNRESET: the client closed the connection
                    trickle.hung_up.set()
                self.close_connection = True
                trickle.done.set()

        return Handler


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as error:  # handed to the test
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_body_slower_than_the_floor_is_ended(tmp_path: Path) -> None:
    trickle = Trickle()
    options = HttpOptions(min_speed=1024, min_speed_time=0.2, attempts=2, backoff=0.01)
    with serve(trickle.handler()) as url:
        source = AppcDiscoverySource(AppcStore(tmp_path / "appc"), url + "/", options)
        thread, errors = in_thread(lambda: source.resolve("example.com/web"))
        thread.join(60)  # the trickle would last MOST * 50 ms a try
        ended = not thread.is_alive()
        trickle.stop.set()
        thread.join(60)
    assert ended
    assert len(errors) == 1 and isinstance(errors[0], TemporaryFailure), errors
    assert "sent less than 1024 bytes/s for 0.2 s" in str(errors[0])
    assert trickle.requests == 2  # slow is temporary: tried again, as often as allowed
    assert list((tmp_path / "appc" / "tmp").iterdir()) == []


def test_a_trickling_fetch_sees_cancellation(tmp_path: Path) -> None:
    # The defaults: 1 KiB/s over 30 s, so the floor does not end this body soon.
    trickle = Trickle()
    with serve(trickle.handler()) as url:
        source = AppcDiscoverySource(AppcStore(tmp_path / "appc"), url + "/")

        async def main() -> None:
            async with trio.open_nursery() as nursery:

                async def fetch() -> None:
                    await trio.to_thread.run_sync(source.resolve, "example.com/web")

                nursery.start_soon(fetch)
                await trio.to_thread.run_sync(trickle.started.wait, 60)
                nursery.cancel_scope.cancel()

        trio.run(main)  # returns once the fetch has given up
        trickle.done.wait(60)  # the server's next writes find the connection closed
        trickle.stop.set()
    # Waited for a whole 64 KiB read, the fetch would hear of it only after MOST bytes.
    assert trickle.hung_up.is_set()
    assert list((tmp_path / "appc" / "tmp").iterdir()) == []


def redirecting(target: Callable[[str], str], count: list[int]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            count.append(1)
            self.send_response(302)
            self.send_header("Location", target(self.path))
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.mark.parametrize(
    ("target", "one_try"),
    [
        (lambda path: path, new_session().max_redirects + 1),  # a redirect loop
        (lambda path: "file:///etc/passwd", 1),
    ],
)
def test_a_failure_that_will_not_get_better_is_not_tried_again(
    tmp_path: Path, target: Callable[[str], str], one_try: int
) -> None:
    count: list[int] = []
    with serve(redirecting(target, count)) as url:
        source = AppcDiscoverySource(AppcStore(tmp_path / "appc"), url + "/")
        with pytest.raises(BadImage, match=r"^appc image http://127\.0\.0\.1:[0-9]+/"):
            source.resolve("example.com/web")
    assert len(count) == one_try
