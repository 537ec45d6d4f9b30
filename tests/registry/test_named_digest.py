"""``RegistryClient.named_digest``: what a tag names now, as ``resolve`` would resolve it.

A start that holds a lazily pulled image asks this of the registry before it
takes the stored record (``lazyfs.images.docker_stored.still_named``): it
must give the digest ``resolve`` records, for a plain manifest of either
schema 2 kind, a schema 1 one, and through an OCI index or a Docker manifest
list, the host's entry; and a registry that cannot be reached must be said
so as a TemporaryFailure, asked once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from providers.errors import NotFound, TemporaryFailure
from providers.manifest import OCI_INDEX, OCI_MANIFEST
from providers.platforms import host_arch
from providers.registry import RegistryClient, RegistryOptions
from tests.support.registry_pulls import FAST
from tests.support.registry_servers import Registry, free_port

pytestmark = pytest.mark.integration


def _client(url: str) -> RegistryClient:
    return RegistryClient(RegistryOptions(registry=url, http=FAST))


@pytest.mark.parametrize("name", ["rich:v2s2", "rich:oci", "multi:latest", "multidocker:latest"])
def test_it_names_the_digest_resolve_records(plain_registry: Registry, name: str) -> None:
    reference = f"{plain_registry.host}/{name}"
    resolved = _client(plain_registry.url).resolve(reference)
    assert _client(plain_registry.url).named_digest(reference) == resolved.digest


def test_a_schema1_manifest_is_named_as_resolved(schema1_registry: Registry) -> None:
    reference = f"{schema1_registry.host}/library/rich:s1"
    resolved = _client(schema1_registry.url).resolve(reference)
    assert _client(schema1_registry.url).named_digest(reference) == resolved.digest


def test_an_unknown_tag_is_not_found(plain_registry: Registry) -> None:
    with pytest.raises(NotFound):
        _client(plain_registry.url).named_digest(f"{plain_registry.host}/rich:nope")


def test_a_registry_failing_is_a_temporary_failure_asked_once() -> None:
    asked: list[str] = []

    class Failing(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(f"{self.command} {self.path}")
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(TemporaryFailure):
            _client(f"http://{host}").named_digest(f"{host}/rich:oci")
        once = list(asked)  # not by GET after the HEAD either: no GET is answered
        # resolve, asked the same, tries again (FAST: a few attempts, quickly).
        with pytest.raises(TemporaryFailure):
            _client(f"http://{host}").resolve(f"{host}/rich:oci")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert once == ["HEAD /v2/rich/manifests/oci"] and len(asked) > 2, asked


def test_a_registry_not_there_is_a_temporary_failure() -> None:
    with pytest.raises(TemporaryFailure):
        url = f"http://127.0.0.1:{free_port()}"
        _client(url).named_digest(f"127.0.0.1:{url.rsplit(':', 1)[1]}/rich:oci")


def test_an_index_of_indexes_is_followed_as_resolve_follows_it(plain_registry: Registry) -> None:
    inner = requests.get(f"{plain_registry.url}/v2/multi/manifests/latest",
                         headers={"Accept": OCI_INDEX}, timeout=10)  # fmt: skip
    inner.raise_for_status()
    outer = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": "sha256:" + hashlib.sha256(inner.content).hexdigest(),
            "size": len(inner.content),
            "platform": {"os": "linux", "architecture": host_arch()},
        }],
    }  # fmt: skip
    put = requests.put(f"{plain_registry.url}/v2/multi/manifests/nested",
                       data=json.dumps(outer).encode(), headers={"Content-Type": OCI_INDEX},
                       timeout=10)  # fmt: skip
    put.raise_for_status()
    reference = f"{plain_registry.host}/multi:nested"
    resolved = _client(plain_registry.url).resolve(reference)
    assert _client(plain_registry.url).named_digest(reference) == resolved.digest


_MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": "sha256:" + "0" * 64, "size": 2},
}).encode()  # fmt: skip


@pytest.mark.parametrize(
    "head",
    [(501, {}), (200, {"Docker-Content-Digest": "sha512:" + "ab" * 64})],
    ids=["no-head", "sha512"],
)
def test_a_head_that_says_nothing_usable_is_asked_by_get(head: tuple[int, dict[str, str]]) -> None:
    # A server with no HEAD (501 is what one answers), or one naming the manifest by
    # another algorithm than resolve's sha256: the GET's bytes decide.
    asked: list[str] = []
    status, said = head

    class Registry(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            asked.append("HEAD")
            self.send_response(status)
            for key, value in {"Content-Type": OCI_MANIFEST, **said}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            asked.append("GET")
            self.send_response(200)
            self.send_header("Content-Type", OCI_MANIFEST)
            self.send_header("Content-Length", str(len(_MANIFEST)))
            self.end_headers()
            self.wfile.write(_MANIFEST)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"127.0.0.1:{server.server_address[1]}"
        named = _client(f"http://{host}").named_digest(f"{host}/app:1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert named == "sha256:" + hashlib.sha256(_MANIFEST).hexdigest()
    assert asked == ["HEAD", "GET"]
