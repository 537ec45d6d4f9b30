"""Errors carry their facts as attributes and name their image once."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from providers.errors import BadImage, DigestMismatch, LazyfsError, NotFound, TemporaryFailure
from providers.registry_http import HttpOptions, RegistryHttp
from tests.support.httpserver import serve


def test_a_digest_mismatch_named_for_its_image_keeps_its_facts() -> None:
    plain = DigestMismatch("blob sha256:aa", expected="sha256:aa", actual="sha256:bb")
    named = plain.for_image("rich:oci")
    assert str(named) == "rich:oci: blob sha256:aa: expected sha256:aa, got sha256:bb"
    assert (named.what, named.expected, named.actual) == (
        "rich:oci: blob sha256:aa",
        "sha256:aa",
        "sha256:bb",
    )
    assert named.image == "rich:oci" and named.__cause__ is plain
    assert named.for_image("rich:oci") is named
    assert str(plain) == "blob sha256:aa: expected sha256:aa, got sha256:bb"  # untouched


@pytest.mark.parametrize(
    "error",
    [
        NotFound("blob x is not here", digest="sha256:x"),
        TemporaryFailure("registry failed", url="http://h/v2/", status=503),
        BadImage("manifest is not JSON"),
    ],
)
def test_any_error_is_named_once_with_its_facts_kept(error: LazyfsError) -> None:
    named = error.for_image("img")
    assert type(named) is type(error)
    assert str(named) == f"img: {error}"
    assert {**vars(named), "image": None} == {**vars(error), "image": None}
    assert named.for_image("img") is named


def statuses(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.mark.parametrize(("status", "kind"), [(404, NotFound), (503, TemporaryFailure)])
def test_registry_errors_carry_the_url_without_credentials(
    status: int, kind: type[NotFound | TemporaryFailure]
) -> None:
    with serve(statuses(status)) as base:
        http = RegistryHttp(HttpOptions(attempts=1))
        secret = base.replace("http://", "http://user:pa55@") + "/v2/x/manifests/1?token=t0k"
        with pytest.raises(kind) as caught:
            http.get(secret, image="img", scope=None)
    error = caught.value
    assert isinstance(error, NotFound | TemporaryFailure)
    assert error.url == f"{base}/v2/x/manifests/1"
    assert error.image == "img"
    assert "pa55" not in str(error) and "t0k" not in str(error)
    if isinstance(error, TemporaryFailure):
        assert error.status == status
