"""The OCI manifest that publishes an image's index blobs, with the image as its ``subject``.

One manifest per image manifest: ``artifactType`` is
``lazyfs.index.artifact.ARTIFACT_TYPE``, its config a tiny JSON blob of
``CONFIG_MEDIA_TYPE`` (the Debian ``docker-registry`` wants a config blob
it can find; an OCI 1.1 registry takes it as well), its ``layers`` the
index (head) blobs and the windows blobs, each annotated with the layer
digest it indexes (the windows are listed so that a registry keeps them,
and named by their head, which is where a reader finds them), and
``subject`` the image manifest.  Built deterministically: the same indexes
for the same image give the same manifest digest, so publishing twice adds
nothing (with the same lazyfs: one that writes the manifest otherwise adds
an artifact, which the newest-first lookup then uses).

The manifest also names its index blobs in an annotation of its own,
``HEADS_ANNOTATION`` (``heads_note``).  A referrers list copies a
manifest's annotations: the Referrers API does so by the distribution spec,
and ``lazyfs.publish.push`` writes the note into the referrers tag's entry
too.  So a lookup that reads the list fetches the index blobs straight away
(``listed_heads``), a round trip sooner than through the manifest.  That
trusts the blobs no less, though the manifest's ``subject`` and
``artifactType`` are then not read: whoever can write the list can push a
manifest that says the same, and each blob is checked against the digest
named for it and held to its layer's digest and size
(``lazyfs.index.published.check_artifact_layer``); an index depends on its
layer alone, so one listed for another image is still right for this
layer.  An entry the tag still lists after its manifest was deleted (a
client that did not update the tag, as the distribution spec asks) is
used: its blobs, if gone too, are a warning and a whole pull of their
layers.

``artifact_layers`` reads such a manifest back, distrusting it: it came
from a registry.  ``listed_heads`` reads the note as distrustfully.  Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lazyfs.index.artifact import (
    ARTIFACT_TYPE,
    ARTIFACT_VERSION,
    INDEX_MEDIA_TYPE,
    LAYER_ANNOTATION,
    MAX_BLOB,
    WINDOWS_MEDIA_TYPE,
)
from providers import untrusted_json
from providers.digest import Digest, parse_digest
from providers.errors import BadImage
from providers.manifest import OCI_MANIFEST, Descriptor

CONFIG_BYTES = json.dumps({"lazyfs_index": ARTIFACT_VERSION}).encode()
# The index blobs by layer, on the manifest and in its referrers entry: {layer: [blob, size]}.
HEADS_ANNOTATION = "dev.lazyfs.index.heads"
# A longer note is not read (the manifest is fetched instead): about 6,000 layers' worth.
MAX_HEADS_NOTE = 1 << 20


def _descriptor(desc: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
    if desc.annotations:
        out["annotations"] = dict(sorted(desc.annotations.items()))
    return out


def artifact_manifest(
    subject: Descriptor,
    config: Descriptor,
    indexes: Mapping[Digest, Descriptor],
    windows: Mapping[Digest, Descriptor] | None = None,
) -> bytes:
    """The manifest publishing ``indexes`` (layer digest -> head blob) for ``subject``.

    ``windows``: layer digest -> windows blob, for the gzip layers.
    """
    layers = []
    for layer, blob in indexes.items():
        listed = [(INDEX_MEDIA_TYPE, blob)]
        if windows is not None and layer in windows:
            listed.append((WINDOWS_MEDIA_TYPE, windows[layer]))
        for media_type, desc in listed:
            notes: dict[str, str] = {LAYER_ANNOTATION: layer}
            layers.append(_descriptor(Descriptor(media_type, desc.digest, desc.size, None, notes)))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": _descriptor(config),
        "layers": layers,
        "subject": _descriptor(subject),
        "annotations": {HEADS_ANNOTATION: heads_note(indexes)},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def heads_note(indexes: Mapping[Digest, Descriptor]) -> str:
    """``HEADS_ANNOTATION``'s value for ``indexes`` (layer digest -> head blob)."""
    doc = {layer: [blob.digest, blob.size] for layer, blob in sorted(indexes.items())}
    return json.dumps(doc, separators=(",", ":"))


def listed_heads(annotations: Mapping[str, str]) -> dict[Digest, Descriptor] | None:
    """The index blobs a referrers entry's ``HEADS_ANNOTATION`` names, by layer digest.

    None when the entry has no such note, or one that does not read (not
    JSON, too long, a malformed digest or size, a size out of range): the
    caller then reads the manifest, which says the same where the note is
    whole.
    """
    note = annotations.get(HEADS_ANNOTATION)
    if note is None or len(note) > MAX_HEADS_NOTE:
        return None
    try:
        # Each object as its pairs, in a type no JSON array decodes to: a layer named twice
        # is seen, and only an object at the top is one.
        pairs = untrusted_json.loads(note, object_pairs_hook=_Pairs)
    except ValueError:
        return None
    if type(pairs) is not _Pairs or not pairs:
        return None
    found: dict[Digest, Descriptor] = {}
    for layer, blob in pairs:
        if type(blob) is not list or len(blob) != 2:
            return None
        named, size = blob
        if type(named) is not str or type(size) is not int or not 0 < size <= MAX_BLOB:
            return None
        try:
            key = parse_digest(layer)
            head = Descriptor(INDEX_MEDIA_TYPE, parse_digest(named), size)
        except BadImage:
            return None
        if key in found:
            return None
        found[key] = head
    return found


class _Pairs(list[tuple[str, object]]):
    """A JSON object's pairs, in order, as ``listed_heads`` decodes them."""


def artifact_layers(data: bytes, subject: Digest) -> dict[Digest, Descriptor]:
    """The index blobs a lazyfs index manifest lists, by the layer digest each names.

    BadImage for a manifest that is not one (another artifact type, another
    subject, a blob over ``MAX_BLOB``, a layer named twice).
    """
    try:
        doc = untrusted_json.loads(data)
    except ValueError:
        raise BadImage("lazyfs index manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
        raise BadImage(f"not a {ARTIFACT_TYPE} manifest")
    named = doc.get("subject")
    if not isinstance(named, dict) or named.get("digest") != subject:
        raise BadImage(f"lazyfs index manifest is not about {subject}")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BadImage("lazyfs index manifest has no layers")
    found: dict[Digest, Descriptor] = {}
    for item in layers:
        if not isinstance(item, dict) or item.get("mediaType") != INDEX_MEDIA_TYPE:
            continue  # a later lazyfs may add other blobs beside the indexes
        notes = item.get("annotations")
        try:
            layer = parse_digest(str(notes[LAYER_ANNOTATION]))  # type: ignore[index]
            digest = parse_digest(str(item["digest"]))
        except (BadImage, KeyError, TypeError, ValueError):
            raise BadImage("lazyfs index manifest lists a malformed index blob") from None
        try:
            blob = Descriptor(INDEX_MEDIA_TYPE, digest, untrusted_json.size(item.get("size")))
        except ValueError as error:
            raise BadImage(f"lazyfs index blob {digest}: size {error}") from None
        if not 0 < blob.size <= MAX_BLOB:
            raise BadImage(f"lazyfs index blob {blob.digest}: size {blob.size} out of range")
        if layer in found:
            raise BadImage(f"lazyfs index manifest names layer {layer} twice")
        found[layer] = blob
    return found
