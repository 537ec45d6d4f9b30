"""``add_referrer`` against a fake registry without the Referrers API: what the referrers
tag holds decides whether it is written.

The distribution spec: "If that pull returns a manifest other than the
expected image index, the client SHOULD report a failure and skip the
remaining steps."  An index with an entry this cannot read is reported too:
written over, it would lose the valid entries beside that one.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

import pytest

from providers.digest import Digest
from providers.errors import BadImage
from providers.manifest import DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from providers.referrers import Referrer, add_referrer, list_referrers, referrers_tag
from providers.registry_http import HttpOptions, RegistryHttp
from providers.registry_push import RegistryPush
from tests.support.httpserver import serve

SUBJECT = Digest("sha256:" + "a" * 64)
OTHER = Digest("sha256:" + "b" * 64)
OURS = Referrer(Digest("sha256:" + "c" * 64), 10, OCI_MANIFEST, "application/x-ours", {})
TAG_PATH = f"/v2/app/manifests/{referrers_tag(SUBJECT)}"
GOOD = {"mediaType": OCI_MANIFEST, "digest": OTHER, "size": 3, "artifactType": "x/y"}


@dataclass
class Tag:
    """The tag's bytes and Content-Type (None: no tag); the PUTs it was sent."""

    body: bytes | None = None
    media_type: str = OCI_INDEX
    puts: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(tag: Tag) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes = b"", media_type: str = "") -> None:
            self.send_response(status)
            if media_type:
                self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with tag.lock:
                body, media_type = tag.body, tag.media_type
            if self.path == TAG_PATH and body is not None:
                self._answer(200, body, media_type)
            else:
                self._answer(404)

        def do_PUT(self) -> None:
            data = self.rfile.read(int(self.headers["Content-Length"]))
            with tag.lock:
                tag.puts.append(data)
                tag.body, tag.media_type = data, self.headers["Content-Type"]
            self._answer(201)

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[Tag, RegistryPush]]:
    tag = Tag()
    with serve(_handler(tag)) as url:
        yield tag, RegistryPush(RegistryHttp(HttpOptions()), url, "app", "app:1")


def _index(*entries: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()


@pytest.mark.parametrize(
    ("body", "media_type", "message"),
    [
        (_index(GOOD, None), OCI_INDEX, "an entry that is not a descriptor"),
        (_index(GOOD, "sha256:x"), OCI_INDEX, "an entry that is not a descriptor"),
        (b'{"schemaVersion": 2, "layers": []}', OCI_MANIFEST, f"holds {OCI_MANIFEST}"),
        (_index(GOOD), DOCKER_MANIFEST_LIST, f"holds {DOCKER_MANIFEST_LIST}"),
        (b"\x00garbage", OCI_INDEX, "not JSON"),
    ],
)
def test_a_tag_that_is_no_index_this_reads_is_reported_and_not_written(
    registry: tuple[Tag, RegistryPush], body: bytes, media_type: str, message: str
) -> None:
    tag, push = registry
    tag.body, tag.media_type = body, media_type
    said = re.escape(f"app:1: referrers tag {referrers_tag(SUBJECT)} left as it is: ")
    with pytest.raises(BadImage, match=f"^{said}.*{re.escape(message)}"):
        add_referrer(push, SUBJECT, OURS, {})
    assert tag.puts == []
    assert tag.body == body
    assert list_referrers(push, SUBJECT) == ()  # listing it: nothing, as the spec has it


def test_a_readable_index_keeps_its_entries(registry: tuple[Tag, RegistryPush]) -> None:
    tag, push = registry
    tag.body = _index(GOOD)
    assert add_referrer(push, SUBJECT, OURS, {}) is True
    assert len(tag.puts) == 1
    assert [r.digest for r in list_referrers(push, SUBJECT)] == [OTHER, OURS.digest]


def test_an_index_served_without_a_media_type_is_known_by_its_own(
    registry: tuple[Tag, RegistryPush],
) -> None:
    tag, push = registry
    tag.body, tag.media_type = _index(GOOD), ""
    assert add_referrer(push, SUBJECT, OURS, {}) is True
    assert json.loads(tag.puts[0])["manifests"][0] == GOOD


def test_no_tag_is_begun_with_our_entry(registry: tuple[Tag, RegistryPush]) -> None:
    _, push = registry
    assert add_referrer(push, SUBJECT, OURS, {}) is True
    assert [r.digest for r in list_referrers(push, SUBJECT)] == [OURS.digest]
