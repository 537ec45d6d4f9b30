"""Docker schema 1 manifests: layer order, throwaway layers, config, signed digests."""

from __future__ import annotations

import base64
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from providers.digest import digest_bytes
from providers.errors import BadImage
from providers.registry import RegistryClient, RegistryOptions
from providers.schema1 import parse_schema1, schema1_digest
from tests.support.httpserver import serve

A, B, EMPTY = ("sha256:" + c * 64 for c in "abe")


def manifest(**overrides: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "schemaVersion": 1,
        "name": "x",
        "tag": "1",
        "fsLayers": [{"blobSum": EMPTY}, {"blobSum": B}, {"blobSum": A}],
        "history": [
            {"v1Compatibility": json.dumps({"throwaway": True, "config": {"Cmd": ["top"]}})},
            {"v1Compatibility": json.dumps({"id": "b"})},
            {"v1Compatibility": json.dumps({"id": "a"})},
        ],
    }
    doc.update(overrides)
    return doc


def test_layers_bottom_first_without_throwaway_and_top_config() -> None:
    parsed = parse_schema1(json.dumps(manifest()).encode())
    assert parsed.layers == (A, B)
    assert parsed.config.cmd == ("top",)


@pytest.mark.parametrize(
    "overrides",
    [
        {"schemaVersion": 2},
        {"history": []},
        {"fsLayers": [{"blobSum": "md5:x"}, {}, {}]},
        {"history": [{"v1Compatibility": "not json"}, {}, {}]},
    ],
)
def test_bad_schema1_is_bad_image(overrides: dict[str, object]) -> None:
    with pytest.raises(BadImage):
        parse_schema1(json.dumps(manifest(**overrides)).encode())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_signed_digest_is_of_the_payload_without_signatures() -> None:
    payload = json.dumps(manifest(), indent=3).encode()
    # Signing cuts the payload before its closing brace and keeps that as the tail.
    cut = payload.rindex(b"\n}")
    protected = {"formatLength": cut, "formatTail": _b64url(payload[cut:])}
    signature = {"header": {"alg": "ES256"}, "signature": "x", "protected": _b64url(
        json.dumps(protected).encode()
    )}  # fmt: skip
    signed = payload[:cut] + b',\n   "signatures": ' + json.dumps([signature]).encode() + b"\n}"
    assert json.loads(signed)["signatures"]
    assert schema1_digest(signed) == digest_bytes(payload)
    assert schema1_digest(payload) == digest_bytes(payload)


def _signed(shown: bytes, length: int, tail: bytes) -> bytes:
    """The document ``shown`` with signatures whose header claims its payload is its
    first ``length`` bytes followed by ``tail``."""
    protected = {"formatLength": length, "formatTail": _b64url(tail)}
    signature = {"header": {"alg": "ES256"}, "signature": "x", "protected": _b64url(
        json.dumps(protected).encode()
    )}  # fmt: skip
    cut = shown.rindex(b"\n}")
    return shown[:cut] + b',\n   "signatures": ' + json.dumps([signature]).encode() + b"\n}"


def test_a_pinned_schema1_image_is_read_from_what_its_digest_covers() -> None:
    # The registry answers for name@D with a document of its own choosing
    # whose signature header claims a payload of nothing followed by the
    # real manifest M (digest D) as the tail: the digest checks out.
    real = json.dumps(manifest(), indent=3).encode()
    evil_layer = "sha256:" + "e" * 64
    evil = json.dumps(manifest(fsLayers=[{"blobSum": evil_layer}], history=[
        {"v1Compatibility": json.dumps({"config": {"Cmd": ["/evil"]}})}
    ]), indent=3).encode()  # fmt: skip
    forged = _signed(evil, 0, real)
    pinned = digest_bytes(real)
    assert schema1_digest(forged) == pinned
    asked: list[str] = []

    class Registry(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            body = forged if "/manifests/" in self.path else b""
            self.send_response(200 if "/manifests/" in self.path else 404)
            self.send_header(
                "Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws"
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()

    with serve(Registry) as base:
        host = base.removeprefix("http://")
        client = RegistryClient(RegistryOptions(registry=base))
        image = client.resolve(f"{host}/x@{pinned}")
    assert [layer.digest for layer in image.layers] == [A, B]
    assert image.config.cmd == ("top",)
    assert not any(evil_layer in path for path in asked)
