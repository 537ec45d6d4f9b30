"""Sizes and other counts in registry documents must be JSON integers.

json reads ``1e999`` and ``Infinity`` as float infinity, and ``int()`` of
it raises OverflowError, which no parser caught; ``int()`` also takes
"123", 1.5 and true, which the OCI spec's int64 is not.  Each document
below is written as text, with the hostile number as a registry would send
it, and read by the parser that reads it in a pull.
"""

from __future__ import annotations

import base64
import json

import pytest

from lazyfs.index.artifact import INDEX_MEDIA_TYPE
from lazyfs.index.artifact_manifest import artifact_layers, artifact_manifest
from lazyfs.index.trace import TRACE_ARTIFACT_TYPE, TRACE_MEDIA_TYPE
from lazyfs.publish.traces import KEY_ANNOTATION, trace_blobs
from providers import untrusted_json
from providers.digest import Digest
from providers.errors import BadImage
from providers.manifest import (
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    parse_image_manifest,
)
from providers.referrers import referrer_entries
from providers.registry_auth import DEFAULT_TOKEN_LIFETIME, parse_token_response
from providers.schema1 import schema1_digest

A = Digest("sha256:" + "a" * 64)
B = Digest("sha256:" + "b" * 64)
C = Digest("sha256:" + "c" * 64)
KEY = f"{A}@{'c' * 32}"

# What a hostile document may hold where a size belongs, as JSON text.
HOSTILE = ["Infinity", "-Infinity", "1e999", "NaN", '"123"', "1.5", "2.0", "true", "-1",
           "null", "[1]", str(1 << 63)]  # fmt: skip
SIZE = "@SIZE@"  # where _text puts the number


def _text(doc: object, raw: str) -> bytes:
    """``doc`` as JSON, with ``raw`` written where it holds the string SIZE."""
    return json.dumps(doc).replace(json.dumps(SIZE), raw).encode()


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_size_that_is_no_json_integer_is_a_value_error(raw: str) -> None:
    with pytest.raises(ValueError, match="is not an integer from 0 to 2"):
        untrusted_json.size(json.loads(raw))


def test_a_json_integer_is_a_size() -> None:
    assert untrusted_json.size(json.loads("0")) == 0
    assert untrusted_json.size(json.loads(str((1 << 63) - 1))) == (1 << 63) - 1


def _image_manifest(layer_size: str) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": A, "size": 2},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": B, "size": SIZE}],
    }
    return _text(doc, layer_size)


@pytest.mark.parametrize("raw", HOSTILE)
def test_an_image_manifest_with_a_bad_layer_size_is_a_bad_image(raw: str) -> None:
    with pytest.raises(BadImage, match=r"^layer 0 has no valid size: .* is not an integer"):
        parse_image_manifest(_image_manifest(raw))


def test_an_image_manifest_with_a_layer_size_is_read() -> None:
    assert parse_image_manifest(_image_manifest("42")).layers[0].size == 42


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_referrer_with_a_bad_size_is_skipped_as_damaged(raw: str) -> None:
    doc = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": A, "size": SIZE, "artifactType": "other/tool"},
            {"digest": B, "size": 7, "artifactType": "ours"},
        ],
    }
    found = referrer_entries(_text(doc, raw))
    assert [(r.digest, r.size) for r in found] == [(B, 7)]


def _index_manifest(blob_size: str) -> bytes:
    subject = Descriptor(OCI_MANIFEST, A, 100)
    config = Descriptor("application/x", B, 2)
    doc = json.loads(artifact_manifest(subject, config, {C: Descriptor(INDEX_MEDIA_TYPE, B, 50)}))
    doc["layers"][0]["size"] = SIZE
    return _text(doc, blob_size)


@pytest.mark.parametrize("raw", HOSTILE)
def test_an_index_manifest_with_a_bad_blob_size_is_a_bad_image(raw: str) -> None:
    with pytest.raises(BadImage, match=rf"^lazyfs index blob {B}: size .* is not an integer"):
        artifact_layers(_index_manifest(raw), A)


def test_an_index_manifest_with_a_blob_size_is_read() -> None:
    assert artifact_layers(_index_manifest("50"), A) == {C: Descriptor(INDEX_MEDIA_TYPE, B, 50)}


def _trace_manifest(blob_size: str) -> bytes:
    doc = {
        "schemaVersion": 2,
        "artifactType": TRACE_ARTIFACT_TYPE,
        "subject": {"digest": A},
        "layers": [{"mediaType": TRACE_MEDIA_TYPE, "digest": B, "size": SIZE,
                    "annotations": {KEY_ANNOTATION: KEY}}],
    }  # fmt: skip
    return _text(doc, blob_size)


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_trace_manifest_with_a_bad_blob_size_is_a_bad_image(raw: str) -> None:
    with pytest.raises(BadImage, match=rf"^lazyfs trace blob {B}: size .* is not an integer"):
        trace_blobs(_trace_manifest(raw), A)


def test_a_trace_manifest_with_a_blob_size_is_read() -> None:
    assert trace_blobs(_trace_manifest("100"), A)[KEY].size == 100


def _schema1(length: str) -> tuple[bytes, bytes]:
    """A signed schema 1 manifest whose header gives ``length`` as formatLength, and
    the payload it has when that is the length of its text before the signatures."""
    payload = json.dumps({"schemaVersion": 1, "fsLayers": []}, indent=3).encode()
    cut = payload.rindex(b"\n}")
    tail = base64.urlsafe_b64encode(payload[cut:]).rstrip(b"=").decode()
    header = _text({"formatLength": SIZE, "formatTail": tail}, length)
    protected = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    signature = json.dumps([{"header": {"alg": "ES256"}, "signature": "x", "protected": protected}])
    return payload[:cut] + b',\n   "signatures": ' + signature.encode() + b"\n}", payload


@pytest.mark.parametrize("raw", HOSTILE)
def test_a_schema1_signature_with_a_bad_format_length_is_a_bad_image(raw: str) -> None:
    with pytest.raises(BadImage, match="unreadable signature header"):
        schema1_digest(_schema1(raw)[0])


def test_a_schema1_signature_with_a_format_length_is_read() -> None:
    payload = _schema1("0")[1]
    cut = payload.rindex(b"\n}")
    signed, _ = _schema1(str(cut))
    assert schema1_digest(signed) == schema1_digest(payload)


@pytest.mark.parametrize(
    "raw", ["Infinity", "1e999", "1" + "0" * 400, "NaN", "true", '"300"', "-1"], ids=lambda r: r[:8]
)
def test_a_token_lifetime_that_is_no_number_of_seconds_is_the_default(raw: str) -> None:
    body = _text({"token": "t", "expires_in": SIZE}, raw)
    assert parse_token_response(body) == ("t", DEFAULT_TOKEN_LIFETIME)


def test_a_token_lifetime_is_read() -> None:
    assert parse_token_response(_text({"token": "t", "expires_in": SIZE}, "300")) == ("t", 300.0)
