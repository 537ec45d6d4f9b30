"""A TLS handshake that fails for another reason than the certificate: said so, not retried."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from providers.errors import TlsFailure
from providers.registry_http import HttpOptions, RegistryHttp
from tests.support.httpserver import serve


def test_https_to_a_plain_http_server_is_a_handshake_failure_asked_once() -> None:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def handle(self) -> None:
            seen.append("connection")  # a TLS hello is no request: count connections
            super().handle()

    with serve(Handler) as url:
        https = url.replace("http://", "https://") + "/v2/?token=secret"
        http = RegistryHttp(HttpOptions(backoff=0.01, attempts=3))
        with pytest.raises(TlsFailure) as caught:
            http.get(https, image="img", scope=None)
    host = url.removeprefix("http://")
    error = caught.value
    assert not error.certificate and error.host == host
    assert str(error) == (
        f"img: TLS handshake with {host} failed: wrong version number (https://{host}/v2/)"
    )
    assert seen == ["connection"]  # a handshake does not get better by asking again
