"""An answer cut off mid-headers ends in lazyfs' one line, with no urllib3 traceback.

A registry whose headers trickle in is cut off at the deadline by the
request's watchdog (``providers.http_session``), and a line of a header
may be half there then. http.client parses what came, and urllib3 logged
the header it could not parse as a warning with its traceback ("Failed to
parse headers ... MissingHeaderBodySeparatorDefect"), before lazyfs' own
error: eight lines where one was due. A server that sends half a header
line and hangs up gives that case every time.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.lazyfs_cli import one_line_error
from tests.support.registry_pulls import lazyfs


@contextmanager
def _half_a_header() -> Iterator[str]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so that the loop sees ``stop``: close wakes no accept
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_half_a_header_ends_in_one_line(tmp_path: Path) -> None:
    with _half_a_header() as url:
        result = lazyfs(tmp_path, "--docker_registry", url, "--docker_registry_timeout", "2",
                        "pull", "rich", timeout=60)  # fmt: skip
    one_line_error(result)
