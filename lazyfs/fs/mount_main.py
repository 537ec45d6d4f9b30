"""The mount process: ``python -m lazyfs.fs.mount_main``, one per mount (pyfuse3 serves one).

Started by ``lazyfs.fs.mount.mount`` with the layers' descriptors and the
store (``--store``) their blobs are in, or for a layer still in a registry
its origin: such a layer is read through the cache daemon of ``--cache-dir``
(``lazyfs.cache.client``; see ``_remote_layer``).  It indexes each layer the store
has no index of yet (``lazyfs.index.stored.ensure_index``, within the
``--max-layer-size`` and ``--max-layer-ratio`` limits) and says ``indexed``
on ``--ready-fd``, or hands the refusal to its caller there
(``lazyfs.fs.mount.refusal``) and exits non-zero.  Then it reads each
index's header (where the layer's bytes are), takes the merged tree from
the store, mapped, or merges the indexes once (``lazyfs.tree.mapped``), mounts it at
``--mountpoint`` (read-only, or copy-on-write into ``--upper`` with
``--work`` for temporaries: see ``lazyfs.fs.upper``) and writes ``ready``
(or one line saying why not, then exits non-zero), then serves until:

- the mount is taken away (``fusermount3 -u``, umount2): it exits 0;
- SIGTERM or SIGINT: it unmounts, then exits 0.

Its operations take the no-open path where the running pyfuse3 and
kernel allow it (``lazyfs.fs.caps``), else today's path with handles.

Options: ``fsname=lazyfs``, ``ro`` unless writable, ``default_permissions`` (the kernel
checks modes, since other users see the tree), ``nosuid,nodev`` unless
``--suid``/``--dev`` say otherwise, and as root ``allow_other``.  See
``lazyfs.fs.mount_options`` for why.  It logs to stderr, which the parent points at a
log file.
"""

from __future__ import annotations

import gc

if __name__ == "__main__":
    # Exec'd: nothing to collect yet, but each pass walks every module loaded (some 10 ms).
    gc.disable()
    # Before trio is imported below: its import would run ``ldconfig -p``.
    from providers.shared_libs import install

    install()

import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, BinaryIO

import pyfuse3
import trio

from lazyfs.blobs.ranges import ByLayer, ChunkCache, TarRangeReader, open_layers
from lazyfs.fs import caps as fuse_caps
from lazyfs.fs.mount_options import mount_options
from lazyfs.fs.mount_wire import INDEXED, READY, mount_limits, parse_mount_args, refusal
from lazyfs.fs.read_only import NoOpenReadOnlyOperations, ReadOnlyOperations
from lazyfs.index.model import LayerData, LayerIndex
from lazyfs.index.stored import (
    check_data_present,
    ensure_index,
    ensure_remote_index,
    index_source,
    load_chunk_table,
    load_index,
)
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from lazyfs.tree.mapped import mount_tree, tree_kept
from providers.digest import Digest
from providers.errors import BackendError, LazyfsError
from providers.manifest import Layer

if TYPE_CHECKING:
    from lazyfs.blobs.trace_run import Recorder
    from lazyfs.cache.client import CacheClient
    from lazyfs.cache.remote import RemoteOrigin
    from lazyfs.fs.writable import WritableOperations
    from providers.tar_stream import LayerLimits

log = logging.getLogger("lazyfs.fs.mount")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class _Indexed:
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


def _index_layers(
    store_root: Path,
    layers: Sequence[tuple[Layer, RemoteOrigin | None]],
    limits: LayerLimits | None,
    cache_dir: Path | None = None,
    trace: str | None = None,
) -> _Indexed:
    """Index each layer the store has no index of yet (once per layer digest).

    Raises NotFound for a blob the store does not have, BadImage or
    UnsafeLayer for a layer indexing refuses (one past ``limits`` too).
    """
    store = Store(store_root)
    blobs = StoreBlobs(store)
    client = _cache_client(cache_dir, layers)
    recorder = None
    if client is not None and trace is not None:
        from lazyfs.blobs.published_ahead import read_windows_blobs
        from lazyfs.blobs.trace_run import start_trace  # loaded only to record or replay

        # A trace names the windows blobs of published indexes too: known before it is replayed.
        read_windows_blobs(store.layers, [layer for layer, origin in layers if origin], client)
        recorder = start_trace(client, trace, store.root)  # and traces published beside
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
            indexes[layer.digest], remote[layer.digest], index_dirs[layer.digest] = _remote_layer(
                store, layer, client, entries=whole, limits=limits
            )
            continue
        blob = files[layer.digest] = blobs.local_blob(layer)
        # It checks (or writes) what the index points into, too.
        indexes[layer.digest] = ensure_index(
            store.layers, store.tmp, layer.digest, blob, entries=whole, limits=limits
        )
    return _Indexed(store.layers, digests, files, indexes, whole, remote, index_dirs, recorder)


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
def _remote_layer(
    store: Store,
    layer: Layer,
    blobs: CacheClient,
    *,
    entries: bool,
    limits: LayerLimits | None,
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
    its digest (``lazyfs.blobs.gzip_remote``), the rest fetched in the background. A layer
    that cannot be read so (no TOC digest, or the store already holds an
    index of another format for it) is fetched whole through the daemon
    into the store (verified by digest and diff_id, as every ingest) and
    read as a local layer. Stored under ``store.layers`` (eStargz: by TOC too).
    """
    # Loaded only with remote layers: it loads the eStargz code.
    from lazyfs.blobs.gzip_remote import open_published  # checks each span it reads
    from lazyfs.index.estargz_store import remote_layers_dir

    if (published := open_published(store.layers, layer, blobs, entries=entries)) is not None:
        _held_to(limits, layer, published[0])  # as a local or eStargz index is
        blobs.layer_mounted(layer.digest, None)  # the rest of the blob in the background
        return published
    index = ensure_remote_index(
        store.layers, store.tmp, layer, blobs, entries=entries, limits=limits
    )
    if index is not None and (where := remote_layers_dir(store.layers, layer)) is not None:
        # eStargz data is read by chunk table; no local blob is named.
        data = check_data_present(where, Path(), index)
        blobs.layer_mounted(layer.digest, load_chunk_table(where, index).prefetch)
        return index, open_layers({layer.digest: data}, blobs), where
    path = StoreBlobs(store, upstream=blobs).local_blob(layer)
    index = ensure_index(
        store.layers, store.tmp, layer.digest, path, entries=entries, limits=limits
    )
    data = check_data_present(store.layers, path, index)
    return index, open_layers({layer.digest: data}, StoreBlobs(store)), store.layers


def _operations(
    indexed: _Indexed,
    upper: Path | None,
    work: Path | None,
    *,
    no_open: bool,
) -> ReadOnlyOperations | WritableOperations:
    layers_dir = indexed.layers_dir
    homes = {d: indexed.index_dirs.get(d, layers_dir) for d in indexed.digests}
    data: dict[Digest, LayerData] = {
        # BadImage here, not EIO later, if a tar copy or checkpoint file went missing.
        digest: check_data_present(layers_dir, indexed.blobs[digest], indexed.indexes[digest])
        for digest in indexed.digests
        if digest not in indexed.remote
    }

    def whole_indexes() -> list[LayerIndex]:
        if indexed.whole:
            return [indexed.indexes[digest] for digest in indexed.digests]
        # The kept tree was there but is damaged: merging needs the entries after all.
        return [_index(homes[digest], digest) for digest in indexed.digests]

    # Not a kept tree made from another image's TOC for one of these layer digests.
    sources = tuple(index_source(homes[d], d) for d in indexed.digests)
    tree = mount_tree(layers_dir, indexed.digests, whole_indexes, sources=sources)
    # A local layer indexed as eStargz earlier (it was remote then) reads its chunks here.
    local = open_layers(data, StoreBlobs(Store(layers_dir.parent)), now=True)  # no thread later
    source = ByLayer({d: indexed.remote.get(d, local) for d in indexed.digests})
    if upper is None:
        read_only = NoOpenReadOnlyOperations if no_open else ReadOnlyOperations
        return read_only(tree, ChunkCache(source))
    if work is None:
        raise RuntimeError("a writable mount needs --work beside --upper")
    # Loaded only for a writable mount: a read-only one starts without them.
    from lazyfs.fs.upper import Upper
    from lazyfs.fs.writable import WritableOperations
    from lazyfs.fs.writable_no_open import NoOpenWritableOperations

    writable = NoOpenWritableOperations if no_open else WritableOperations
    return writable(Upper(tree, upper, work, source), ChunkCache(source))


def _index(layers_dir: Path, digest: Digest) -> LayerIndex:
    index = load_index(layers_dir, digest)
    if index is None:
        # _index_layers checked it; it went missing or was damaged since.
        raise RuntimeError(f"layer {digest}: its index in {layers_dir} is missing or damaged")
    return index


def _held_to(limits: LayerLimits | None, layer: Layer, index: LayerIndex) -> None:
    """BadImage if ``layer`` unpacks (``index.tar_size``) past ``limits``."""
    from providers.tar_stream import LayerLimits

    (limits or LayerLimits()).check(str(layer.digest), index.tar_size, layer.size)


def _answer(ready: BinaryIO, line: bytes) -> bool:
    """Tell the caller ``line``; False if it is gone (then nobody waits for this mount)."""
    try:
        ready.write(line)
        return True
    except OSError:
        return False


class _Stop:
    """Whether a stop signal came; set from the signal handler before trio runs."""

    requested = False
    number = 0

    @classmethod
    def handler(cls, number: int, frame: FrameType | None) -> None:
        cls.requested, cls.number = True, number


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _watch_signals() -> None:
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        # A signal that came before trio took over counts too.
        if not _Stop.requested:
            async for number in signals:
                _Stop.handler(number, None)
                break
        log.info("%s: unmounting", signal.Signals(_Stop.number).name)
        pyfuse3.terminate()  # main() returns; close() below unmounts


def main(argv: Sequence[str] | None = None) -> int:
    gc.disable()  # while it starts, forked or exec'd (see the top); resumed to serve
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    args = parse_mount_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s lazyfs-mount[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for number in _STOP_SIGNALS:
        signal.signal(number, _Stop.handler)
    with os.fdopen(args.ready_fd, "wb", buffering=0) as ready:
        try:
            indexed = _index_layers(
                args.store, args.layer, mount_limits(args), args.cache_dir, args.trace
            )
        except (LazyfsError, OSError) as error:
            # The caller raises it as it is: one line for the user, no traceback.
            log.info("refused to mount %s: %s", args.mountpoint, error)
            _answer(ready, refusal(error))
            return 1
        except Exception as error:
            log.exception("cannot index the layers of %s", args.mountpoint)
            _answer(ready, f"{type(error).__name__}: {error}\n".encode())
            return 1
        if not _answer(ready, INDEXED):
            return 1
        try:
            no_open = fuse_caps.no_open()
            ops = _operations(indexed, args.upper, args.work, no_open=no_open)
            # What executables load, read ahead on a first start (a replayed trace knows better).
            if indexed.remote and (args.trace is None or indexed.recorder is not None):
                from lazyfs.fs.predict import attach

                attach(ops, indexed.remote, args.executable)
            symlinks = "cached" if fuse_caps.cache_symlinks(ops) else "asked each time"
            if args.debug:
                from lazyfs.fs.debug import log_requests

                log_requests(ops)
            fuse_caps.read_ahead(ops, args.mountpoint)  # a larger window, from INIT on
            options = mount_options(writable=args.upper is not None, suid=args.suid, dev=args.dev)
            pyfuse3.init(ops, str(args.mountpoint), options)
        except Exception as error:
            log.exception("cannot mount %s", args.mountpoint)
            _answer(ready, f"{type(error).__name__}: {error}\n".encode())
            return 1
        path = "no-open" if no_open else f"open ({fuse_caps.why_not() or fuse_caps.ENV}=0)"
        log.info(
            "serving %s (%d inodes) on the %s path, symlink targets %s",
            *(args.mountpoint, len(ops.tree.inodes), path, symlinks),
        )
        if not _answer(ready, READY):
            log.info("the caller is gone: unmounting %s", args.mountpoint)
            pyfuse3.close(unmount=True)
            return 1
        if indexed.recorder is not None:
            indexed.recorder.serving()
    gc.freeze()  # what the start made lives as long as the mount: no collection walks it
    gc.enable()
    try:
        trio.run(_serve)
    except BaseException:
        log.exception("serving %s failed", args.mountpoint)
        pyfuse3.close(unmount=True)
        return 1
    # After a stop signal we unmount; after an unmount from outside there is nothing left.
    pyfuse3.close(unmount=_Stop.requested)
    if indexed.recorder is not None:
        indexed.recorder.finish()  # the workload ended before it settled: keep what it read
    log.info("unmounted %s", args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
