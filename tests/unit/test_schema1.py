"""Docker schema 1 manifests: layer order, throwaway layers, config, signed digests."""

from __future__ import annotations

import base64
import json

import pytest

from providers.digest import digest_bytes
from providers.errors import BadImage
from providers.schema1 import parse_schema1, schema1_digest

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
