"""Finding an image's published indexes, for a lazy mount of its gzip and tar layers.

``published_layers`` is asked, when a registry image is provisioned for a
lazy backend, about the layers that are neither in the store nor eStargz:

1. the image's referrers are listed once for the provision, unfiltered, and
   shared with the trace lookup (``lazyfs.publish.listing``: one request to
   the Referrers API, a second for the referrers tag on a registry without
   it); nothing of the answer outlives the provision but what it found (the
   store's image record names the index blobs, so a later provision of the
   image does not ask again; one that found none asks again);
2. the newest such artifact lists an index blob per layer: its entry in
   the list names them (``listed_heads``), or else its manifest, the
   newest that reads (``newest_first``), fetched by digest and checked
   against it;
3. each wanted layer's index blob is fetched (side by side, up to
   ``_AT_ONCE`` at once and ``_BYTES_AT_ONCE`` of them: ``rounds``),
   checked against its digest, decoded, one at a time
   (``lazyfs.index.artifact.decode``, every size and offset checked)
   and held to the layer: it must name the layer's digest and size; then it
   is kept in the store by layer and blob (``lazyfs.index.published``).

What it returns (layer digest -> index blob digest) goes into the layers'
annotations (``with_index_blobs``), which is how the mount process finds the
index.  Anything that goes wrong is a warning naming why, and that layer (or
the image) is pulled whole as before: never a failed provision (a store
that cannot keep an index, full or not writable, included), never an
index that was not checked.  A layer read this way is checked span by span
as it is read (``lazyfs.blobs.gzip_remote``), and by blob digest and diff_id
when the cache daemon has it whole.  Blocking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from lazyfs.index.artifact import ARTIFACT_TYPE, decode_text
from lazyfs.index.artifact_manifest import artifact_layers, listed_heads
from lazyfs.index.published import (
    check_artifact_layer,
    is_set_aside,
    keep_here,
    load_published,
    store_published,
)
from lazyfs.publish.listing import CREATED, Listing, list_image, newest_first
from lazyfs.store.disk import Store
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage, DigestMismatch, LazyfsError
from providers.manifest import INDEX_BLOB_ANNOTATION, OCI_MANIFEST, Descriptor, ImageManifest, Layer
from providers.registry import RegistryClient
from providers.registry_push import RegistryPush

log = logging.getLogger(__name__)
# Index blobs fetched and kept at once, at most, and their bytes (as their descriptors
# give them, each up to MAX_BLOB, which a hostile registry names): one larger is
# fetched alone, as when they were fetched one after the other.
_AT_ONCE = 4
_BYTES_AT_ONCE = 64 << 20
_DECODING = threading.Lock()  # index blobs decoded and kept one at a time (``_keep``)

__all__ = [
    "CREATED",
    "listed_indexes",
    "newest_first",
    "published_layers",
    "rounds",
    "set_aside",
    "with_index_blobs",
]


def with_index_blobs(manifest: ImageManifest, blobs: dict[Digest, Digest]) -> ImageManifest:
    """``manifest`` with each layer in ``blobs`` annotated with its index blob."""
    layers = []
    for layer in manifest.layers:
        blob = blobs.get(layer.digest)
        if blob is not None:
            notes = dict(layer.annotations)
            notes[INDEX_BLOB_ANNOTATION] = blob
            layer = dataclasses.replace(layer, annotations=tuple(sorted(notes.items())))
        layers.append(layer)
    return dataclasses.replace(manifest, layers=tuple(layers))


def published_layers(
    store: Store,
    client: RegistryClient,
    image: ImageManifest,
    wanted: Sequence[Layer],
    listing: Listing | None = None,
    listed: Mapping[Digest, Descriptor] | None = None,
) -> dict[Digest, Digest]:
    """The index blob kept in ``store`` for each layer of ``wanted`` that has one published.

    ``listing``: the image's referrers as the provision listed them
    (``lazyfs.publish.listing.list_image``); listed here when not given.
    ``listed``: what ``listed_indexes`` found in it, when asked already.
    """
    if listing is None:
        listing = list_image(client, image.reference, image.digest)
        if listing is None:
            return {}
    push = listing.push
    if listed is None:
        listed = listed_indexes(listing, image)
    jobs = [(layer, listed[layer.digest]) for layer in wanted if layer.digest in listed]
    found: dict[Digest, Digest] = {}
    for (layer, blob), refused in zip(jobs, _keep_each(store, push, jobs), strict=True):
        if refused is not None:
            # OSError: the store could not keep it (ENOSPC, EACCES); the pull goes on.
            log.warning(
                "%s: layer %s is pulled whole: its published index %s is refused: %s",
                image.reference,
                layer.digest,
                blob.digest,
                refused,
            )
            continue
        found[layer.digest] = blob.digest
    return found


def _keep_each(
    store: Store, push: RegistryPush, jobs: Sequence[tuple[Layer, Descriptor]]
) -> list[LazyfsError | OSError | None]:
    """``_keep`` each (layer, index blob) of ``jobs``, several at once; what each failed with.

    One after the other, each index blob was a round trip, then its
    decoding and keeping, while the start waited: the heads are fetched
    side by side, and one decodes while the others arrive, in ``rounds``
    bounded in count and bytes (a hostile registry's four heads of 512 MiB
    were 2 GiB held at once); they decode one at a time (``_keep``), each
    inflating to up to ``MAX_INDEX``.  The threads live inside this call
    (``RegistryPush`` is thread-safe).
    """

    def keep(job: tuple[Layer, Descriptor]) -> LazyfsError | OSError | None:
        try:
            _keep(store, push, *job)
        except (LazyfsError, OSError) as error:
            # Only what it says is kept: its traceback holds the decoding's frames, and with
            # them an index inflated (up to MAX_INDEX), until every job is done.
            error.__traceback__ = error.__context__ = error.__cause__ = None
            return error
        return None

    if len(jobs) < 2:
        return [keep(job) for job in jobs]
    got: list[LazyfsError | OSError | None] = [None] * len(jobs)
    sizes = [blob.size for _, blob in jobs]
    with ThreadPoolExecutor(_AT_ONCE, thread_name_prefix="lazyfs-index-fetch") as pool:
        # Each round fetched, decoded and kept before the next: the bytes held stay bounded.
        for numbers in rounds(sizes, _BYTES_AT_ONCE, _AT_ONCE):
            for number, failed in zip(
                numbers, pool.map(keep, [jobs[n] for n in numbers]), strict=True
            ):
                got[number] = failed
    return got


def rounds(sizes: Sequence[int], budget: int, at_once: int) -> list[list[int]]:
    """The jobs of ``sizes`` (by position, in order) cut into rounds run one after another:
    each of at most ``at_once`` jobs whose sizes add up to at most ``budget``, or of one."""
    out: list[list[int]] = []
    spent = 0
    for number, size in enumerate(sizes):
        if not out or len(out[-1]) >= at_once or spent + size > budget:
            out.append([])
            spent = 0
        out[-1].append(number)
        spent += size
    return out


def listed_indexes(listing: Listing, image: ImageManifest) -> dict[Digest, Descriptor]:
    """The index blob published for each layer of ``image``, by layer, as ``listing`` (its
    referrers) leads to them (step 2 of the module docstring); none, with a warning, when
    the registry fails."""
    try:
        return _listed(listing)
    except LazyfsError as error:
        log.warning("%s: cannot look for published indexes: %s", image.reference, error)
        return {}


def set_aside(store: Store, listed: Mapping[Digest, Descriptor]) -> set[Digest]:
    """The layers of ``listed`` whose listed index blob a mount here set aside: refused
    when kept (``_keep``), that layer pulled whole. One that cannot be told (EACCES) is
    not: ``_keep`` says so, if it cannot either."""
    aside = set()
    for layer, blob in listed.items():
        with contextlib.suppress(OSError):
            if is_set_aside(store.layers, layer, blob.digest):
                aside.add(layer)
    return aside


def _listed(listing: Listing) -> dict[Digest, Descriptor]:
    """The index blobs the newest readable lazyfs artifact of the listing lists, by layer.

    As its entry in the listing names them, when it does: no round trip for
    its manifest.
    """
    push, subject = listing.push, listing.subject
    for referrer in listing.of_type(ARTIFACT_TYPE):
        heads = listed_heads(referrer.annotations)
        if heads is not None:
            return heads  # named by the list that names the manifest: trusted no less
        try:
            got = push.get_manifest(referrer.digest, OCI_MANIFEST)
            if got is None:
                continue  # listed, since deleted
            actual = digest_bytes(got[0])
            if actual != referrer.digest:
                raise DigestMismatch(
                    f"{push.image}: index manifest", expected=referrer.digest, actual=actual
                )
            return artifact_layers(got[0], subject)
        except (BadImage, DigestMismatch) as error:
            log.warning("%s: published index %s ignored: %s", push.image, referrer.digest, error)
    return {}


def _keep(store: Store, push: RegistryPush, layer: Layer, blob: Descriptor) -> None:
    """Fetch, check and keep the index blob ``blob`` of ``layer``, unless kept already."""
    named = dataclasses.replace(layer, annotations=((INDEX_BLOB_ANNOTATION, blob.digest),))
    if is_set_aside(store.layers, layer.digest, blob.digest):
        raise BadImage(f"index blob {blob.digest}: set aside, a mount refused it")
    if load_published(store.layers, named, entries=False) is not None:
        return
    data = push.get_blob(blob.digest, blob.size)
    if len(data) != blob.size:
        raise BadImage(f"index blob {blob.digest}: {len(data)} bytes, want {blob.size}")
    # One decodes at a time, whatever the rounds fetch at once: a head of a few KiB (a
    # hostile one) inflates to MAX_INDEX (128 MiB) while it decodes, and is held until kept.
    with _DECODING:
        # Held to the layer's size and the store's limits before its index inflates.
        artifact, text = decode_text(data, layer=layer.digest, size=layer.size,
                                     limits=store.limits)  # fmt: skip
        check_artifact_layer(artifact, layer)
        store_published(store.layers, blob.digest, artifact, text=text)
        keep_here(layer, blob.digest, artifact)  # for the start to ask for its program from
