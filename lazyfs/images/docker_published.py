"""What a lazy pull finds published beside a registry image: layer indexes and traces.

``lazy_layer`` says which layers a lazy pull leaves in the registry, read
by range through the cache daemon: eStargz layers, and layers whose index
was published beside the image and kept (``lazyfs.publish.fetch``: the
store's image record names the index blob in an annotation no registry
manifest carries, ``without_index_blobs``).  ``published`` looks for those
indexes, and for the prefetch trace of the command the mount will run, in
one referrers listing (``lazyfs.publish.listing``), and may begin that
trace's replay before the indexes are decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from lazyfs.store.disk import Store
from providers.manifest import (
    INDEX_BLOB_ANNOTATION,
    TOC_DIGEST_ANNOTATION,
    Descriptor,
    ImageManifest,
    Layer,
)

if TYPE_CHECKING:
    # Loaded by a registry image only: the registry client loads requests.
    from lazyfs.publish.listing import Listing
    from providers.digest import Digest
    from providers.registry import RegistryClient

log = logging.getLogger(__name__)


class TraceHook(Protocol):
    """What a lazy fetch is told of the prefetch trace the image's mount will replay
    (``lazyfs.provision.lazy.ReplayAhead``)."""

    @property
    def cache_dir(self) -> Path:
        """Where the mount's cache daemon keeps the traces it records."""
        ...

    def key(self, manifest: ImageManifest) -> str | None:
        """The trace key of ``manifest`` run as the provision will run it; None for none."""
        ...

    def __call__(self, manifest: ImageManifest, layers: Sequence[Layer]) -> None:
        """Begin the replay of the trace for ``layers``, those read by range. Never raises."""
        ...


def lazy_layer(layer: Layer) -> bool:
    """Whether ``layer`` may stay in its registry, read by range.

    An eStargz layer, or one whose published index was found and kept
    (``lazyfs.publish.fetch``).
    """
    return (
        layer.annotation(TOC_DIGEST_ANNOTATION) is not None
        or layer.annotation(INDEX_BLOB_ANNOTATION) is not None
    )


def without_index_blob(layer: Layer) -> Layer:
    """``layer`` naming no index blob: only ``lazyfs.publish.fetch`` names one."""
    if layer.annotation(INDEX_BLOB_ANNOTATION) is None:
        return layer
    kept = tuple(a for a in layer.annotations if a[0] != INDEX_BLOB_ANNOTATION)
    return dataclasses.replace(layer, annotations=kept)


def without_index_blobs(manifest: ImageManifest) -> ImageManifest:
    """``manifest`` with no layer naming an index blob (``without_index_blob``)."""
    layers = tuple(without_index_blob(layer) for layer in manifest.layers)
    return manifest if layers == manifest.layers else dataclasses.replace(manifest, layers=layers)


class Listings:
    """The referrers listing of one image, begun as soon as its manifest's digest is known.

    The registry client's ``resolve`` calls ``seen`` once it has the image
    manifest, before it asks for the config: the listing goes out then, in
    a thread of its own, a round trip before the config is in.  ``get``
    gives the resolved image's listing: the one begun for its digest, or
    one asked for now (nothing began, or a mirror that resolved the image
    named another digest than the one resolved at last).
    """

    def __init__(self, client: RegistryClient, reference: str) -> None:
        self._client = client
        self._reference = reference
        self._lock = threading.Lock()
        self._begun: dict[Digest, Future[Listing | None]] = {}

    def seen(self, digest: Digest) -> None:
        """Begin listing the referrers of ``digest``, once; never raises (``resolve``'s hook)."""
        from lazyfs.publish.listing import list_image

        with self._lock:
            if digest in self._begun:
                return
            future = self._begun[digest] = Future()

        def list_now() -> None:
            try:
                future.set_result(list_image(self._client, self._reference, digest))
            except BaseException as error:
                future.set_exception(error)

        try:
            threading.Thread(target=list_now, name="lazyfs-referrers", daemon=True).start()
        except RuntimeError:  # no thread to be had: ``get`` lists
            with self._lock:
                del self._begun[digest]

    async def get(self, manifest: ImageManifest) -> Listing | None:
        """The listing of ``manifest``'s referrers (``lazyfs.publish.listing.list_image``)."""
        from lazyfs.publish.listing import list_image

        with self._lock:
            future = self._begun.get(manifest.digest)
        if future is None:
            return await trio.to_thread.run_sync(
                list_image, self._client, manifest.reference, manifest.digest,
                abandon_on_cancel=True,
            )  # fmt: skip
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)


def load_lookup_code() -> None:
    """Import what ``published`` imports, ahead of it. Blocking."""
    import lazyfs.publish.fetch
    import lazyfs.publish.listing
    import lazyfs.publish.traces  # noqa: F401


async def published(
    store: Store,
    client: RegistryClient,
    manifest: ImageManifest,
    listings: Listings,
    *,
    traced: TraceHook | None = None,
) -> ImageManifest:
    """``manifest`` (naming no index blob: ``without_index_blobs``), its layers with a
    published index so marked.

    ``listings``: where the referrers listing began while the image was
    resolved, if it did. Once the indexes are listed, when a layer is read
    by range, the trace of ``traced``'s key is looked for (none without
    ``traced``), and then ``traced`` (``DockerProvider.fetch_lazy``'s) runs
    in a thread of its own, not waited for, whether a trace was found or not.
    """
    # Loaded for lazy pulls only: it loads the index code.
    from lazyfs.publish import fetch as index_lookup
    from lazyfs.publish.traces import fetch_trace

    # One referrers listing for both lookups below (lazyfs.publish.listing).
    listing = await listings.get(manifest)
    if listing is None:
        return manifest  # warned: pulled whole as without an index
    wanted = [
        layer
        for layer in manifest.layers
        if not lazy_layer(layer) and not store.has_blob(layer.digest)
    ]
    found: dict[Digest, Digest] = {}
    listed: dict[Digest, Descriptor] = {}  # the index blob listed for each layer
    aside: set[Digest] = set()  # layers whose listed one a mount here refused
    heard = trio.Event()  # ``listed`` is as full as it gets
    if not wanted:
        heard.set()

    async def look(what: str, lookup: Callable[[], object]) -> None:
        # Each says what the registry got wrong itself; anything else is a bug, and
        # only a hint's: logged whole, and the provision goes on without what it found.
        try:
            await trio.to_thread.run_sync(lookup, abandon_on_cancel=True)
        except Exception:
            log.warning("%s: looking for published %s failed", manifest.reference, what,
                        exc_info=True)  # fmt: skip

    def keep() -> None:
        found.update(index_lookup.published_layers(store, client, manifest, wanted, listing,
                                                   listed))  # fmt: skip

    def listed_here() -> None:
        listed.update(index_lookup.listed_indexes(listing, manifest))
        aside.update(index_lookup.set_aside(store, listed))

    async def indexes() -> None:
        try:
            await look("indexes", listed_here)
        finally:
            heard.set()
        if any(layer.digest in listed for layer in wanted):
            await look("indexes", keep)

    def fetch(hook: TraceHook, remote: list[Layer]) -> None:
        key = hook.key(manifest)
        # Counted as the mount counts it: on the layers it reads remotely (none: no trace).
        sizes = {layer.digest: layer.size for layer in remote
                 if not store.has_blob(layer.digest)}  # fmt: skip
        if key is not None and sizes:
            fetch_trace(store, client, manifest, key, hook.cache_dir, sizes, listing)

    async def traces() -> None:
        if traced is None:
            return  # a mount that runs no command replays no trace
        await heard.wait()  # at once, as a rule: the listing holds what it needs
        # Read by range: eStargz, or with an index listed and not set aside (one refused
        # after all is pulled whole, and what a replay fetched of it lost).
        remote = [layer for layer in manifest.layers if lazy_layer(layer)
                  or (layer.digest in listed and layer.digest not in aside)]  # fmt: skip
        if remote:
            await look("traces", partial(fetch, traced, remote))
            # Not waited for.
            with contextlib.suppress(RuntimeError):  # no thread to be had: the mount sends it
                threading.Thread(target=traced, args=(manifest, remote),
                                 name="lazyfs-replay-ahead", daemon=True).start()  # fmt: skip

    # The learned prefetch trace too (a hint whose fetches are verified as any), fetched
    # beside the indexes' blobs, once they are listed (as a rule, with no request).
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traces)
        if wanted:
            nursery.start_soon(indexes)
    return index_lookup.with_index_blobs(manifest, found) if found else manifest
