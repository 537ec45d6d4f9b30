"""``publish_indexes``: an image's layer indexes, pushed beside it as one OCI artifact.

For an image whose blobs are all in the store (a full pull made them so):

1. the image manifest is fetched again by digest, for the ``subject``
   descriptor (its media type and size), and checked against the digest;
2. each layer that is plain gzip or tar gets its index from the store, built
   there first if missing (``lazyfs.index.stored.ensure_index``), and its
   artifact blobs (the head: entries, checkpoints, span and window digests;
   a gzip layer's windows) are pushed unless the repository has them; zstd
   and eStargz layers are left out (a zstd frame has nowhere to enter;
   eStargz carries its own TOC), and so are gzip layers of several members;
3. the config blob and the artifact manifest are pushed, by digest;
4. the manifest is listed as a referrer of the image: the registry's
   Referrers API does that itself (it answers ``OCI-Subject``), otherwise
   the referrers tag is updated (``providers.referrers.add_referrer``).

Everything is pushed by content, deterministically: publishing an image
again changes nothing.  Blocking.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from lazyfs.index.artifact import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    MAX_INDEX,
    WINDOWS_MEDIA_TYPE,
    encode,
)
from lazyfs.index.artifact_build import build_artifact
from lazyfs.index.artifact_manifest import (
    CONFIG_BYTES,
    HEADS_ANNOTATION,
    artifact_manifest,
)
from lazyfs.index.formats import GZIP, PLAIN_TAR, format_of
from lazyfs.index.model import dumps
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage, DigestMismatch, NotFound
from providers.manifest import DOCKER_MANIFEST, OCI_MANIFEST, Descriptor, ImageManifest
from providers.reference import parse_reference
from providers.referrers import Referrer, add_referrer
from providers.registry import RegistryClient
from providers.registry_push import RegistryPush

log = logging.getLogger(__name__)

PUBLISHED = (GZIP.name, PLAIN_TAR.name)


@dataclass(frozen=True)
class Published:
    """What ``publish_indexes`` pushed: the artifact manifest, the layers it indexes."""

    artifact: Digest
    subject: Digest
    layers: tuple[Digest, ...]
    skipped: tuple[Digest, ...]
    tag_updated: bool


def layer_artifact_blob(store: Store, layer: Digest) -> tuple[bytes, bytes] | None:
    """The artifact blobs (head, windows) of the stored layer ``layer``; None if not published.

    Builds and stores its index first when the store has none.
    """
    blob = store.blob_path(layer)
    if not blob.is_file():
        raise NotFound(f"layer {layer} is not in the store: pull the image first", digest=layer)
    with blob.open("rb") as stream:
        if format_of(stream.read(8)).name not in PUBLISHED:
            return None  # not indexed here at all: building would copy a zstd layer whole
    index = ensure_index(store.layers, store.tmp, layer, blob, limits=store.limits)
    if index.compression not in PUBLISHED:
        return None  # an eStargz index kept from its TOC
    check_data_present(store.layers, blob, index)
    if len(dumps(index)) > MAX_INDEX:
        return None  # more than any reader inflates: nobody would use it
    built = build_artifact(index, blob)
    return None if built is None else (encode(built[0]), built[1])


def publish_indexes(store: Store, push: RegistryPush, image: ImageManifest) -> Published:
    """Publish the indexes of ``image`` (its blobs in ``store``) to ``push``'s repository.

    BadImage when no layer of it has an index to publish; registry errors
    as ``RegistryPush`` raises them (Unauthorized without push rights).
    """
    got = push.get_manifest(image.digest, f"{OCI_MANIFEST}, {DOCKER_MANIFEST}")
    if got is None:
        raise NotFound(f"{push.image}: manifest {image.digest} is not in {push.repository}")
    data, media_type = got
    if digest_bytes(data) != image.digest:
        raise DigestMismatch(
            f"{push.image}: manifest", expected=image.digest, actual=digest_bytes(data)
        )
    subject = Descriptor(media_type or OCI_MANIFEST, image.digest, len(data))
    indexes: dict[Digest, Descriptor] = {}
    windows: dict[Digest, Descriptor] = {}
    skipped = []
    for layer in image.layers:
        if layer.digest in indexes:
            continue  # one layer twice in an image: one index
        blob = layer_artifact_blob(store, layer.digest)
        if blob is None:
            skipped.append(layer.digest)
            continue
        if blob[1]:
            windows[layer.digest] = push.push_blob(blob[1], WINDOWS_MEDIA_TYPE)
        indexes[layer.digest] = push.push_blob(blob[0], INDEX_MEDIA_TYPE)
    if not indexes:
        raise BadImage(f"{push.image}: no gzip or tar layer to publish an index of")
    config = push.push_blob(CONFIG_BYTES, CONFIG_MEDIA_TYPE)
    manifest = artifact_manifest(subject, config, indexes, windows)
    digest = digest_bytes(manifest)
    answer = push.put_manifest(digest, manifest, OCI_MANIFEST)
    # The entry carries the manifest's note of its index blobs, as the Referrers API would.
    notes = {HEADS_ANNOTATION: json.loads(manifest)["annotations"][HEADS_ANNOTATION]}
    entry = Referrer(digest, len(manifest), OCI_MANIFEST, ARTIFACT_TYPE, notes)
    updated = add_referrer(push, image.digest, entry, answer)
    log.info("%s: published indexes of %d layers as %s", push.image, len(indexes), digest)
    return Published(digest, image.digest, tuple(indexes), tuple(skipped), updated)


def repository_push(client: RegistryClient, reference: str) -> RegistryPush:
    """Where ``reference``'s indexes go: its repository at its origin, never a mirror.

    The origin is the last endpoint a pull tries (``RegistryClient``'s
    order: mirrors first, then the registry itself).
    """
    ref = parse_reference(reference)
    base = client._endpoints(ref, reference)[-1]
    return RegistryPush(client.http, base, ref.repository, reference)
