"""Which stored Docker image a start may take from the store, and when it asks its registry.

A pull records the image (``Store.put_image``) once the layers it pulls
are in; a lazy pull (``DockerProvider.fetch_lazy``) leaves the layers read
by range (``lazy_layer``) in the registry, so their blobs arrive later, if
ever.  ``stored_image`` finds such an image all the same when each of those
layers has here what its lazy mount opens it from
(``lazyfs.fs.mount_layers.remote_layer``): its published index kept by
``lazyfs.publish.fetch`` (``load_published``), or the index an earlier
mount built from its eStargz TOC (``ensure_remote_layer``).  Without it,
the layer's mount would read the TOC or fetch the whole blob, and the
image is resolved again, as it is when the record is not there.

An image found whole is taken as it is, as Mesos takes a cached image.
One found with layers still in the registry is taken only while its
reference still names it (``still_named``): the mount will read those
layers by digest from the registry, so a tag moved to another image must
be noticed at the next start, not never (the old blobs may be gone from
the registry with the old manifest).  That costs one request, a HEAD of
the manifest where the registry says its digest (a GET of an index, as a
rule), instead of a resolve (manifest, config, referrers, indexes).
When the registry cannot be reached at all, the stored image starts, with
a warning: its remote layers serve what the cache holds, and a read of
anything else fails (EIO), where not starting at all was the choice
before.  A reference by digest names one image for good: never asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from lazyfs.images.docker_published import lazy_layer, without_index_blob, without_index_blobs
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BadImage, LazyfsError, TemporaryFailure
from providers.manifest import ImageManifest, Layer
from providers.reference import parse_reference

if TYPE_CHECKING:
    # Loaded by a registry image only: the registry client loads requests.
    from providers.registry import RegistryClient

log = logging.getLogger(__name__)


def stored_image(
    store: Store, reference: str, platform: str, *, lazy: bool, trust_published: bool
) -> ImageManifest | None:
    """The stored image, if every layer is in the store or, ``lazy``, mounts by range here.

    ``trust_published`` off, a kept index blob is ignored (``without_index_blobs``):
    such a layer needs its blob. Found, the record counts as used now. Blocking.
    """

    def present(layer: Layer) -> bool:
        if not trust_published:
            layer = without_index_blob(layer)
        if store.has_blob(layer.digest):
            return True
        return lazy and lazy_layer(layer) and mounts_here(store, layer)

    stored = store.find_image(reference, platform, present)
    if stored is None or trust_published:
        return stored
    # Kept by an earlier provision that trusted them: not trusted now.
    return without_index_blobs(stored)


def remote_layers(store: Store, image: ImageManifest) -> list[Layer]:
    """The layers of ``image`` whose blobs are not in ``store``. Blocking."""
    return [layer for layer in image.layers if not store.has_blob(layer.digest)]


@dataclass
class NamedNow:
    """What the registry said a reference names, asked at most once per start: the look
    before the pull lock and the one after waiting for it decide from one answer, so a
    start told that the tag moved never takes the old image on a second answer's failure."""

    asked: bool = False
    digest: Digest | None = None  # after asking: None when the registry answered with an error


async def still_named(client: RegistryClient, stored: ImageManifest, named: NamedNow) -> bool:
    """Whether ``stored``, with layers still in its registry, is what its reference names.

    Asks the registry (``RegistryClient.named_digest``) unless ``named`` holds
    its answer already. True, with a warning, when the registry cannot be
    reached (TemporaryFailure): nothing is known then, and it is asked again
    by a later look; False when it answers otherwise, with another digest or
    an error, which the resolve that follows meets again and reports.
    """
    if parse_reference(stored.reference).digest is not None:
        return True
    if not named.asked:
        try:
            named.digest = await trio.to_thread.run_sync(
                client.named_digest, stored.reference, abandon_on_cancel=True
            )
        except TemporaryFailure as exc:
            log.warning(
                "%s; starting the image stored here: its layers still in the registry "
                "read only what the cache holds",
                exc.for_image(stored.reference),
            )
            return True
        except LazyfsError as exc:
            log.info("resolving %s again: %s", stored.reference, exc)
        named.asked = True
        if named.digest is not None and named.digest != stored.digest:
            log.info("%s now names %s, not the %s stored", stored.reference, named.digest,
                     stored.digest)  # fmt: skip
    return named.digest == stored.digest


def mounts_here(store: Store, layer: Layer) -> bool:
    """Whether a lazy mount opens ``layer`` (not in the store) from what the store keeps.

    As ``remote_layer`` tries them: its published index, kept whole and not
    set aside; else the eStargz index built from the TOC its descriptor
    names, when no index of another format (built from a whole blob) stands
    in its way. Blocking; reads index headers, never the network.
    """
    # Loaded by lazy starts only: the index code.
    from lazyfs.index.estargz import toc_digest
    from lazyfs.index.formats import ESTARGZ
    from lazyfs.index.published import load_published
    from lazyfs.index.stored import load_index
    from lazyfs.index.stored_remote import unindexed_toc

    try:
        if load_published(store.layers, layer, entries=False) is not None:
            return True
        if toc_digest(dict(layer.annotations)) is None:
            return False
        whole = load_index(store.layers, layer.digest, entries=False)
        if whole is not None and whole.compression != ESTARGZ.name:
            return False  # the mount would fetch the blob whole
        return unindexed_toc(store.layers, layer) is None
    except BadImage:
        return False  # a damaged annotation: resolved again, which says what is wrong
