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
nothing.

``artifact_layers`` reads such a manifest back, distrusting it: it came
from a registry.  Pure.
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
from providers.digest import Digest, parse_digest
from providers.errors import BadImage
from providers.manifest import OCI_MANIFEST, Descriptor

CONFIG_BYTES = json.dumps({"lazyfs_index": ARTIFACT_VERSION}).encode()


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
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def artifact_layers(data: bytes, subject: Digest) -> dict[Digest, Descriptor]:
    """The index blobs a lazyfs index manifest lists, by the layer digest each names.

    BadImage for a manifest that is not one (another artifact type, another
    subject, a blob over ``MAX_BLOB``, a layer named twice).
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
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
            blob = Descriptor(
                INDEX_MEDIA_TYPE, parse_digest(str(item["digest"])), int(item["size"])
            )
        except (BadImage, KeyError, TypeError, ValueError):
            raise BadImage("lazyfs index manifest lists a malformed index blob") from None
        if not 0 < blob.size <= MAX_BLOB:
            raise BadImage(f"lazyfs index blob {blob.digest}: size {blob.size} out of range")
        if layer in found:
            raise BadImage(f"lazyfs index manifest names layer {layer} twice")
        found[layer] = blob
    return found
