"""The bench's timeline: each request through the shaping proxy, with its response's times."""

from __future__ import annotations

import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
BODY = bytes(range(256)) * 64  # 16 KiB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: both requests on one connection

    def do_GET(self) -> None:
        span = self.headers.get("Range")
        body = BODY
        if span:
            first, last = span.removeprefix("bytes=").split("-")
            body = BODY[int(first) : int(last) + 1]
        self.send_response(206 if span else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def benchlib(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import benchlib.shaper
    import benchlib.timeline

    yield benchlib
    for name in [n for n in sys.modules if n == "benchlib" or n.startswith("benchlib.")]:
        del sys.modules[name]


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_each_request_is_a_row_with_its_range_status_bytes_and_times(
    benchlib: Any, server: int
) -> None:
    digest = "sha256:" + "ab" * 32
    with benchlib.shaper.shaping_proxy(server, rate=100e6, rtt=0.01) as link:
        start = time.perf_counter()
        with requests.Session() as session:
            whole = session.get(f"http://{link.host}/v2/x/manifests/latest", timeout=10)
            part = session.get(
                f"http://{link.host}/v2/x/blobs/{digest}?token=secret",
                headers={"Range": "bytes=100-1123"},
                timeout=10,
            )
        end = time.perf_counter()
        rows = link.heard.requests(start, end)
    assert (whole.status_code, len(whole.content)) == (200, len(BODY))
    assert part.content == BODY[100:1124]
    assert [(r.what, r.span, r.status) for r in rows] == [
        ("GET /v2/x/manifests/latest", "", "200"),
        ("GET /v2/x/blobs/sha256:abababababab", "100-1123", "206"),
    ]
    assert rows[0].connection == rows[1].connection
    assert [r.opened for r in rows] == [True, False]
    # The response's head and body, as they came back: more than the body alone.
    assert rows[0].down > len(BODY)
    assert len(BODY) > rows[1].down > 1024
    for row in rows:
        assert row.first is not None and row.done is not None
        assert 0 <= row.sent < row.first <= row.done <= end - start
    # Half a round trip there and half back, at least, before the first byte; and for
    # the connection's first request, the handshake's round trip before that.
    assert rows[0].first - rows[0].sent >= 2 * 0.01 - 1e-6
    assert rows[1].first - rows[1].sent >= 0.01 - 1e-6
    assert rows[1].sent >= rows[0].done


def test_a_window_of_time_gives_the_requests_sent_in_it(benchlib: Any, server: int) -> None:
    with benchlib.shaper.shaping_proxy(server, rate=100e6, rtt=0.0) as link:
        requests.get(f"http://{link.host}/before", timeout=10)
        start = time.perf_counter()
        requests.get(f"http://{link.host}/during", timeout=10)
        end = time.perf_counter()
        requests.get(f"http://{link.host}/after", timeout=10)
        rows = link.heard.requests(start, end)
    assert [r.what for r in rows] == ["GET /during"]


def test_render_draws_one_line_a_request_with_its_bar(benchlib: Any) -> None:
    timeline = benchlib.timeline
    rows = [
        timeline.Request(1, "GET /v2/x/manifests/latest", "", 0.0, 0.02, 0.5, "200", 900),
        timeline.Request(2, "GET /v2/x/blobs/sha256:abababababab", "0-9", 0.5, None, None),
    ]
    rows[0].opened = True
    text = timeline.render("cold-start debian: row", 1.0, rows)
    lines = text.splitlines()
    assert lines[0].startswith("## cold-start debian: row: printed at 1000 ms, 2 requests ")
    first, second = lines[4], lines[5]
    assert first.split()[:6] == ["0", "20", "500", "1*", "200", "900"]
    assert first.endswith("GET /v2/x/manifests/latest")
    assert "  -" + "=" * 24 + " " * 25 + "  " in first  # waits 1/50, then its response
    assert second.split()[:4] == ["500", "-", "-", "2"]
    assert "  " + "." * 25 + "-" * 25 + "  " in second  # still waiting when printed
    assert second.endswith("sha256:abababababab 0-9")


def test_the_timelines_show_the_median_run_and_the_slowest_and_keep_every_run(
    benchlib: Any,
) -> None:
    import benchlib.measure
    import benchlib.report

    def run(seconds: float, path: str) -> Any:
        row = benchlib.timeline.Request(1, f"GET {path}", "", 0.0, 0.01, 0.02, "200", 10)
        return benchlib.measure.Timing(seconds, requests=(row,))

    def never() -> Any:
        raise AssertionError("not run here")

    contender = benchlib.measure.Contender("row", True, never)
    contender.samples = [run(1.5, "/a"), run(2.4, "/slow"), run(1.4, "/b")]
    result = benchlib.measure.Result("cold-start", "debian", [contender])
    text = benchlib.report.timelines([result])
    titles = [line for line in text.splitlines() if line.startswith("## ")]
    assert [t.split(": printed")[0] for t in titles] == [
        "## cold-start debian: row",
        "## cold-start debian: row (its slowest run)",
    ]
    assert "printed at 1500 ms" in titles[0] and "printed at 2400 ms" in titles[1]
    kept = result.to_json()["contenders"][0]["timelines"]
    assert [runs[0]["what"] for runs in kept] == ["GET /a", "GET /slow", "GET /b"]
    # One run only: its median is its slowest, shown once.
    contender.samples = contender.samples[:1]
    assert (
        len([x for x in benchlib.report.timelines([result]).splitlines() if x.startswith("## ")])
        == 1
    )
