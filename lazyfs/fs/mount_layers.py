"""The mount process's layers made ready: each one's blob or remote reader, and its index.

``index_layers`` indexes each layer the store has no index of yet
(``lazyfs.index.stored.ensure_index``, within the mount's limits); a layer
still in a registry is read through the cache daemon (``remote_layer``).
What it gives (``Indexed``) is what the mount process makes its tree and
operations from (``lazyfs.fs.mount_main``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.blobs.ranges import TarRangeReader, open_layers
from lazyfs.index.model import LayerIndex
from lazyfs.index.stored import check_data_present, ensure_index, load_chunk_table
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from lazyfs.tree.mapped import tree_kept
from providers.digest import Digest
from providers.errors import BackendError
from providers.manifest import Layer

if TYPE_CHECKING:
    from lazyfs.blobs.trace_run import Recorder
    from lazyfs.cache.client import CacheClient
    from lazyfs.cache.remote import RemoteOrigin
    from lazyfs.index.estargz_toc import Toc
    from providers.layer_limits import LayerLimits

# A layer read through its published index that is this small is fetched whole as it
# is mounted, as an eStargz one is with its footer: a read of it would fetch a span of it
# and the cache's chunk around it, most of it anyway, and what a program reads of such a
# layer (an image's own code, in its top layer) it often reads last, a round trip it
# would wait on.  The cache's chunk (``lazyfs.cache.layout.CHUNK_SIZE``, not imported: a
# mount of local layers loads no cache code).
WHOLE_AT_MOUNT = 64 << 10


@dataclass(frozen=True)
class Indexed:
    """The layers made ready to mount: each one's blob and stored index.

    ``indexes`` are whole where the merged tree must be made (``whole``),
    else headers only (no entries): what a kept tree needs. ``blobs`` are
    the local layers' files, ``remote`` the readers of the others.
    """

    layers_dir: Path
    digests: list[Digest]
    blobs: dict[Digest, Path]
    indexes: dict[Digest, LayerIndex]
    whole: bool
    remote: dict[Digest, TarRangeReader]
    index_dirs: dict[Digest, Path]  # where each remote layer's index is
    recorder: Recorder | None = None  # of the prefetch trace, told when the mount serves
    replaying: bool = False  # a prefetch trace, which knows better than ``predict``


def index_layers(
    store_root: Path,
    layers: Sequence[tuple[Layer, RemoteOrigin | None]],
    limits: LayerLimits | None,
    cache_dir: Path | None = None,
    trace: str | None = None,
    executable: Sequence[str] = (),
    *,
    trace_sent: bool = False,
) -> Indexed:
    """Index each layer the store has no index of yet (once per layer digest).

    ``executable``: where the program may be, asked for from the TOCs
    before indexing on a start that replays no trace, when every layer is
    remote (``lazyfs.fs.predict_toc``), and what it loads once its headers
    are in (``lazyfs.fs.predict_libs``); each TOC read so is indexed from.

    Raises NotFound for a blob the store does not have, BadImage or
    UnsafeLayer for a layer indexing refuses (one past ``limits`` too).
    """
    store = Store(store_root)
    blobs = StoreBlobs(store)
    client = _cache_client(cache_dir, layers)
    recorder = None
    replaying = False
    if client is not None and trace is not None:
        from lazyfs.blobs.trace_run import start_trace  # loaded only to record or replay

        # Traces published beside too; the caller may have sent the replay (``mount_ahead``).
        recorder = start_trace(client, trace, store.root, sent=trace_sent)
        replaying = bool(client.replaying)
    tocs: dict[Layer, Toc] = {}
    if client is not None and executable and not replaying and all(o for _, o in layers):
        from lazyfs.fs.predict_libs import ask_libraries_soon
        from lazyfs.fs.predict_toc import ask_program

        # What the program loads is asked for too, by a thread, once its headers are in.
        tocs = ask_program(
            store.layers, [layer for layer, _ in layers], client, executable,
            found=ask_libraries_soon,
        )  # fmt: skip
    digests = [layer.digest for layer, _ in layers]
    # With the image's merged tree kept, the mount needs only the indexes'
    # headers; without it, it merges the entries, so check them whole (a
    # damaged index is built again here, not refused every time below).
    whole = not tree_kept(store.layers, digests)
    files: dict[Digest, Path] = {}
    indexes: dict[Digest, LayerIndex] = {}
    remote: dict[Digest, TarRangeReader] = {}
    index_dirs: dict[Digest, Path] = {}
    for layer, origin in layers:
        if origin is not None and client is not None:
            indexes[layer.digest], remote[layer.digest], index_dirs[layer.digest] = remote_layer(
                store, layer, client, entries=whole, limits=limits, toc=tocs.pop(layer, None)
            )
            continue
        blob = files[layer.digest] = blobs.local_blob(layer)
        # It checks (or writes) what the index points into, too.
        indexes[layer.digest] = ensure_index(
            store.layers, store.tmp, layer.digest, blob, entries=whole, limits=limits
        )
    return Indexed(
        store.layers, digests, files, indexes, whole, remote, index_dirs, recorder, replaying
    )


def _cache_client(
    cache_dir: Path | None, layers: Sequence[tuple[Layer, RemoteOrigin | None]]
) -> CacheClient | None:
    """The daemon's client for the remote layers, if there are any."""
    if all(origin is None for _, origin in layers):
        return None
    # Loaded only with remote layers: a mount of local layers starts without
    # the daemon's protocol (protobuf) and client.
    from lazyfs.cache.client import CacheClient, remote_blob

    remote = {
        layer.digest: remote_blob(origin.host, origin.repository, layer)
        for layer, origin in layers
        if origin is not None
    }
    if not remote:
        return None
    if cache_dir is None:
        raise BackendError("remote layers need --cache-dir, the cache daemon's directory")
    return CacheClient(cache_dir, remote)


# The seam for remote layers: only this function knows how a layer is read lazily.
def remote_layer(
    store: Store,
    layer: Layer,
    blobs: CacheClient,
    *,
    entries: bool,
    limits: LayerLimits | None,
    toc: Toc | None = None,
) -> tuple[LayerIndex, TarRangeReader, Path]:
    """The index of a layer still in a registry, the reader of its tar stream, its layers dir.

    ``blobs`` reads the layer's blob by range through the cache daemon
    (``lazyfs.cache.client.CacheClient``): cached chunks from the cache
    files, misses fetched once by the daemon. An eStargz layer (its
    ``toc.digest`` annotation) is indexed from its footer and TOC, checked
    against the annotation, and read chunk by chunk, each chunk checked
    against its ``chunkDigest`` before any byte of it is served; the daemon
    is asked at once for the files before its prefetch landmark (one range
    request) and for the rest of the blob in the background. A gzip or tar
    layer whose index was published beside its image (kept at provision:
    ``lazyfs.index.published``) is read span by span, each checked against
    its digest (``lazyfs.blobs.gzip_remote``), the rest fetched in the background (at once
    when it is small: ``WHOLE_AT_MOUNT``). A layer
    that cannot be read so (no TOC digest, or the store already holds an
    index of another format for it) is fetched whole through the daemon
    into the store (verified by digest and diff_id, as every ingest) and
    read as a local layer. Stored under ``store.layers`` (eStargz: by TOC too).
    ``toc``: an eStargz layer's TOC, read and checked already.
    """
    # Loaded only with remote layers: it loads the eStargz code.
    from lazyfs.blobs.gzip_remote import open_published  # checks each span it reads
    from lazyfs.index.estargz_store import remote_layers_dir
    from lazyfs.index.stored_remote import ensure_remote_layer

    if (published := open_published(store.layers, layer, blobs, entries=entries)) is not None:
        _held_to(limits, layer, published[0])  # as a local or eStargz index is
        # A small one whole now, the rest of the blob in the background.
        whole = (0, layer.size) if layer.size <= WHOLE_AT_MOUNT else None
        blobs.layer_mounted(layer.digest, whole)
        return published
    found = ensure_remote_layer(
        store.layers, store.tmp, layer, blobs, entries=entries, limits=limits, toc=toc
    )
    if found is not None and (where := remote_layers_dir(store.layers, layer)) is not None:
        # eStargz data is read by chunk table; no local blob is named.
        index, table = found
        data = check_data_present(where, Path(), index)
        if table is None:
            table = load_chunk_table(where, index)
        blobs.layer_mounted(layer.digest, table.prefetch)
        return index, open_layers({layer.digest: data}, blobs, tables={layer.digest: table}), where
    path = StoreBlobs(store, upstream=blobs).local_blob(layer)
    index = ensure_index(
        store.layers, store.tmp, layer.digest, path, entries=entries, limits=limits
    )
    data = check_data_present(store.layers, path, index)
    return index, open_layers({layer.digest: data}, StoreBlobs(store)), store.layers


def _held_to(limits: LayerLimits | None, layer: Layer, index: LayerIndex) -> None:
    """BadImage if ``layer`` unpacks (``index.tar_size``) past ``limits``."""
    from providers.layer_limits import LayerLimits

    (limits or LayerLimits()).check(str(layer.digest), index.tar_size, layer.size)
