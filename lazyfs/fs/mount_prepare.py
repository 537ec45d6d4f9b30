"""A lazy mount's eStargz layers indexed by its caller while the mount process loads.

A first mount of remote eStargz layers spends its start on two things,
one after the other in one process: loading its code (trio and pyfuse3,
a quarter of a second) and reading, checking and indexing the layers'
tables of contents (a third of a second for the bench's Debian image).
Its caller, which exec'd it, waits idle meanwhile, on a machine that has
a second core. So the caller does the second itself, at the same time
(``prepare_layers``): it reads the TOCs through the cache daemon, asks for
the program they name (``lazyfs.fs.predict_toc.ask_program``) and, in a
thread that outlives the call, for what the program loads once its
headers are in (``lazyfs.fs.predict_libs``), stores each layer's index
(``lazyfs.index.stored_remote.ensure_remote_index``) and keeps their
merged tree (``lazyfs.tree.mapped.mount_tree``).

The mount process waits for it before it looks at the store: ``--wait-fd``,
the read end of a pipe whose write end only the caller holds, so its EOF
comes when the caller is done or dies (``lazyfs.fs.mount_main``). It then
finds the indexes and the tree kept, reads no TOC and merges nothing: it
reads the indexes' headers and maps the tree, as on any later start.
Whatever the caller did not do (a layer it did not index, a tree it did
not keep) the mount process does as ever.

Only for a mount process that ``mount`` exec'd: one forked by a mount
server has loaded its code already, and does this as fast itself.
Loaded by lazy mounts only (``index_meanwhile``): it loads the index
code. Blocking.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from lazyfs.cache.client import CacheClient, remote_blob
from lazyfs.cache.remote import Remote, RemoteOrigin
from lazyfs.fs.predict_libs import ask_libraries_soon
from lazyfs.fs.predict_toc import ask_program
from lazyfs.index.estargz_store import remote_layers_dir
from lazyfs.index.model import LayerIndex
from lazyfs.index.published import load_published
from lazyfs.index.stored import index_source
from lazyfs.index.stored_remote import ensure_remote_index, unindexed_toc
from lazyfs.index.trace import TraceError, load_trace
from lazyfs.store.disk import Store
from lazyfs.tree.kept import cyclic_gc_paused
from lazyfs.tree.mapped import mount_tree
from providers.digest import Digest
from providers.errors import LazyfsError
from providers.manifest import Layer
from providers.tar_stream import LayerLimits

log = logging.getLogger(__name__)


def index_meanwhile(
    store: Path, layers: Sequence[Layer], remote: Remote, limits: LayerLimits | None
) -> None:
    """``prepare_layers`` for a mount of ``layers`` from ``remote``, while its process loads.

    What it refuses the layers for is raised: the mount process would
    refuse them the same way. Anything else is logged and left to the mount
    process, which indexes what was not indexed here as ever.
    """
    try:
        prepare_layers(
            store, layers, remote.origins, remote.daemon.cache_dir,
            executable=remote.executable, trace=remote.trace, limits=limits,
        )  # fmt: skip
    except LazyfsError:
        raise
    except Exception as error:
        log.warning("the mount process indexes the layers itself: %s", error)


def prepare_layers(
    store_root: Path,
    layers: Sequence[Layer],
    origins: Mapping[Digest, RemoteOrigin],
    cache_dir: Path,
    *,
    executable: Sequence[str] = (),
    trace: str | None = None,
    limits: LayerLimits | None = None,
) -> None:
    """Index the eStargz layers of ``layers`` (the mount's, bottom first) that are still
    in a registry and not indexed yet; with all of them, their merged tree too.

    As the mount process would (``lazyfs.fs.mount_layers.index_layers``,
    ``lazyfs.fs.mount_main``): the program among ``executable`` is asked for
    from the TOCs first, unless the mount replays the prefetch trace of
    ``trace``; each index is stored under its layer's lock, so a mount
    process that comes to it meanwhile waits and then reads it back; the
    tree is kept as the mount would keep it, so the mount only maps it.
    A layer with a published index or no TOC digest is left to the mount.

    Raises what the mount process would refuse the layers for: BadImage or
    UnsafeLayer for a layer indexing refuses (past ``limits`` too),
    DigestMismatch for a TOC that is not the one its descriptor names,
    NotFound or TemporaryFailure for a blob the daemon cannot read.
    """
    store = Store(store_root)
    todo = [
        layer
        for layer in layers
        if layer.digest in origins
        and unindexed_toc(store.layers, layer) is not None
        and load_published(store.layers, layer, entries=False) is None
    ]
    if not todo:
        return
    client = CacheClient(
        cache_dir,
        {layer.digest: remote_blob(*_origin(origins[layer.digest]), layer) for layer in todo},
    )
    try:
        # The TOCs', the indexes' and the tree's many objects: no cycles to collect.
        with cyclic_gc_paused():
            tocs = {}
            if executable and not _replays(cache_dir, store_root, trace):
                tocs = ask_program(
                    store.layers, layers, client, executable, found=ask_libraries_soon
                )
            indexes = {}
            for layer in todo:
                toc = tocs.pop(layer, None)
                index = ensure_remote_index(
                    store.layers, store.tmp, layer, client, limits=limits, toc=toc
                )
                if index is not None:
                    indexes[layer.digest] = index
            if len(indexes) == len(layers):
                _keep_tree(store, layers, indexes)
    finally:
        client.close()


def _origin(origin: RemoteOrigin) -> tuple[str, str]:
    return origin.host, origin.repository


def _keep_tree(store: Store, layers: Sequence[Layer], indexes: Mapping[Digest, LayerIndex]) -> None:
    """Keep the merged tree of ``layers``, all indexed here, as the mount process would."""
    digests = [layer.digest for layer in layers]
    homes = {layer.digest: remote_layers_dir(store.layers, layer) for layer in layers}
    sources = tuple(index_source(homes[d] or store.layers, d) for d in digests)
    mount_tree(store.layers, digests, lambda: [indexes[d] for d in digests], sources=sources)


def _replays(cache_dir: Path, store_root: Path, trace: str | None) -> bool:
    """Whether a mount of ``trace`` replays it (``lazyfs.blobs.trace_run.start_trace``):
    then it asks for nothing from the TOCs. A key that is no trace's replays nothing,
    and records nothing either."""
    if trace is None:
        return False
    try:
        return load_trace(cache_dir, trace) is not None or load_trace(store_root, trace) is not None
    except TraceError:
        return True
