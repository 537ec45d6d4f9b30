"""Simple discovery over HTTP tries a failed fetch again, as registry requests are."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from providers.appc_source import AppcDiscoverySource
from providers.appc_store import AppcStore
from providers.errors import TemporaryFailure
from tests.support.acis import aci_bytes, aci_file_name, manifest_doc
from tests.support.httpserver import serve

ACI = aci_bytes(manifest_doc("example.com/web"), {"index.html": b"hello\n"}, compression="none")


def server(answers: list[int]) -> type[BaseHTTPRequestHandler]:
    """Answers each request with the next status of ``answers`` (then 200, the ACI)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            status = answers.pop(0) if answers else 200
            if status == 0:  # half the ACI, then the connection is cut
                self.send_response(200)
                self.send_header("Content-Length", str(len(ACI)))
                self.end_headers()
                self.wfile.write(ACI[: len(ACI) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            body = ACI if status == 200 else b"busy"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.mark.parametrize("failures", [[503], [429, 500], [0]])
def test_a_fetch_that_fails_for_a_while_is_tried_again(tmp_path: Path, failures: list[int]) -> None:
    answers = list(failures)
    with serve(server(answers)) as url:
        source = AppcDiscoverySource(AppcStore(tmp_path / "appc"), url + "/")
        image = source.resolve("example.com/web")
    assert answers == []
    assert image.layers[0].size == len(ACI)
    assert list((tmp_path / "appc" / "tmp").iterdir()) == []


def test_a_fetch_that_keeps_failing_ends_with_the_last_failure(tmp_path: Path) -> None:
    with serve(server([503] * 5)) as url:
        source = AppcDiscoverySource(AppcStore(tmp_path / "appc"), url + "/")
        location = url + "/" + aci_file_name("example.com/web")
        with pytest.raises(TemporaryFailure, match=f"^appc image {location}: HTTP 503$"):
            source.resolve("example.com/web")
