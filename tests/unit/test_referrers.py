"""Referrers lists and the index artifact manifest, without a registry."""

from __future__ import annotations

import json

import pytest

from lazyfs.index.artifact import ARTIFACT_TYPE, INDEX_MEDIA_TYPE, LAYER_ANNOTATION, MAX_BLOB
from lazyfs.index.artifact_manifest import artifact_layers, artifact_manifest
from providers.digest import Digest
from providers.errors import BadImage
from providers.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor
from providers.referrers import Referrer, referrer_entries, referrers_tag, with_referrer

A = Digest("sha256:" + "a" * 64)
B = Digest("sha256:" + "b" * 64)
C = Digest("sha256:" + "c" * 64)


def test_referrers_tag() -> None:
    assert referrers_tag(A) == "sha256-" + "a" * 64
    assert referrers_tag(Digest("sha512:" + "d" * 128)) == "sha512-" + "d" * 64


def test_adding_keeps_other_entries_as_they_were() -> None:
    other = {"mediaType": OCI_MANIFEST, "digest": B, "size": 3, "artifactType": "x/y",
             "annotations": {"k": "v"}, "futureField": [1, 2]}  # fmt: skip
    current = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [other]})
    ours = Referrer(A, 10, OCI_MANIFEST, ARTIFACT_TYPE, {})
    updated = with_referrer(current.encode(), ours)
    assert updated is not None
    doc = json.loads(updated)
    assert doc["manifests"][0] == other
    assert doc["manifests"][1]["digest"] == A
    assert with_referrer(updated, ours) is None  # there already: nothing to write
    assert [r.digest for r in referrer_entries(updated)] == [B, A]


def test_adding_to_nothing() -> None:
    ours = Referrer(A, 10, OCI_MANIFEST, ARTIFACT_TYPE, {"n": "1"})
    updated = with_referrer(None, ours)
    assert updated is not None
    entries = referrer_entries(updated)
    assert [(r.digest, r.artifact_type, dict(r.annotations)) for r in entries] == [
        (A, ARTIFACT_TYPE, {"n": "1"})
    ]


@pytest.mark.parametrize(
    ("current", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"schemaVersion": 2}', "not an OCI image index"),
        # Another tool's manifest, put at the tag by mistake.
        (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(),
         "not an OCI image index"),
        # One entry that is no descriptor: the valid one beside it must not be lost.
        (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                     "manifests": [{"digest": B, "size": 3}, None]}).encode(),
         "an entry that is not a descriptor"),
    ],
)  # fmt: skip
def test_adding_to_what_is_no_index_is_refused(current: bytes, message: str) -> None:
    # Replacing it would drop what it lists; the spec: report a failure, skip the update.
    with pytest.raises(BadImage, match=message):
        with_referrer(current, Referrer(A, 10, OCI_MANIFEST, ARTIFACT_TYPE, {}))


def test_bad_entries_are_skipped_a_bad_list_refused() -> None:
    doc = {"schemaVersion": 2, "manifests": [{"digest": "nope", "size": 1},
           {"digest": A, "size": 2, "artifactType": ARTIFACT_TYPE}]}  # fmt: skip
    assert [r.digest for r in referrer_entries(json.dumps(doc).encode())] == [A]
    with pytest.raises(BadImage, match="not an OCI image index"):
        referrer_entries(b'{"manifests": 3}')


def _manifest() -> bytes:
    subject = Descriptor(OCI_MANIFEST, A, 100)
    config = Descriptor("application/x", B, 2)
    return artifact_manifest(subject, config, {C: Descriptor(INDEX_MEDIA_TYPE, B, 50)})


def test_artifact_manifest_round_trip() -> None:
    data = _manifest()
    assert _manifest() == data  # deterministic: publishing twice pushes the same digest
    assert artifact_layers(data, A) == {C: Descriptor(INDEX_MEDIA_TYPE, B, 50)}
    doc = json.loads(data)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["subject"]["digest"] == A


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(artifactType="x"), "not a application/vnd.lazyfs.index.v2"),
        (lambda d: d["subject"].update(digest=B), "not about"),
        (lambda d: d["layers"][0].update(size=MAX_BLOB + 1), "out of range"),
        (lambda d: d["layers"][0]["annotations"].update({LAYER_ANNOTATION: "x"}), "malformed"),
        (lambda d: d["layers"].append(dict(d["layers"][0])), "twice"),
        (lambda d: d.update(layers={}), "no layers"),
    ],
)
def test_artifact_manifest_refused(change: object, message: str) -> None:
    doc = json.loads(_manifest())
    change(doc)  # type: ignore[operator]
    with pytest.raises(BadImage, match=message):
        artifact_layers(json.dumps(doc).encode(), A)


def test_a_registry_manifest_never_names_an_index_blob() -> None:
    from lazyfs.images.docker_published import without_index_blobs
    from lazyfs.publish.fetch import with_index_blobs
    from providers.manifest import INDEX_BLOB_ANNOTATION, ImageManifest, Layer

    hostile = Layer(A, "", 1, None, (("a", "1"), (INDEX_BLOB_ANNOTATION, B)))
    plain = Layer(C, "", 1)
    image = ImageManifest("x", A, (hostile, plain))
    cleaned = without_index_blobs(image)
    assert [layer.annotations for layer in cleaned.layers] == [(("a", "1"),), ()]
    marked = with_index_blobs(cleaned, {C: B})
    assert marked.layers[1].annotation(INDEX_BLOB_ANNOTATION) == B
    assert marked.layers[0].annotation(INDEX_BLOB_ANNOTATION) is None
