"""The mount process: ``python -m lazyfs.fs.mount_main``, one per mount (pyfuse3 serves one).

Started by ``lazyfs.fs.mount.mount`` with the layers' descriptors and the
store (``--store``) their blobs are in, or for a layer still in a registry
its origin: such a layer is read through the cache daemon of ``--cache-dir``
(``lazyfs.cache.client``; see ``lazyfs.fs.mount_layers``).  It indexes each layer the store
has no index of yet (``lazyfs.index.stored.ensure_index``, within the
``--max-layer-size`` and ``--max-layer-ratio`` limits) and says ``indexed``
on ``--ready-fd``, or hands the refusal to its caller there
(``lazyfs.fs.mount.refusal``) and exits non-zero.  Then it reads each
index's header (where the layer's bytes are), takes the merged tree from
the store, mapped, or merges the indexes once (``lazyfs.tree.mapped``), mounts it at
``--mountpoint`` (read-only, or copy-on-write into ``--upper`` with
``--work`` for temporaries: see ``lazyfs.fs.upper``; refused first, before
indexing, when that upper cannot hold whiteouts: ``check_whiteouts`` in
``lazyfs.fs.upper_disk``) and writes ``ready``
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
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, BinaryIO

import pyfuse3
import trio

from lazyfs.blobs.ranges import ByLayer, ChunkCache, open_layers
from lazyfs.fs import caps as fuse_caps
from lazyfs.fs.mount_layers import Indexed, index_layers
from lazyfs.fs.mount_options import mount_options
from lazyfs.fs.mount_wire import INDEXED, READY, mount_limits, parse_mount_args, refusal
from lazyfs.fs.read_only import NoOpenReadOnlyOperations, ReadOnlyOperations
from lazyfs.index.model import LayerData, LayerIndex
from lazyfs.index.stored import check_data_present, index_source, load_index
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from lazyfs.tree.mapped import mount_tree
from providers.digest import Digest
from providers.errors import BadImage, LazyfsError

if TYPE_CHECKING:
    from lazyfs.fs.writable import WritableOperations

log = logging.getLogger("lazyfs.fs.mount")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long a thread holds the GIL while another waits for it, for the mount
# process's whole life: half a millisecond, not CPython's 5 ms. The main
# thread indexes and then serves; the threads beside it (the one that asks
# for the program's libraries once its ELF headers are in, a long trace's replay,
# the workers that read chunks while it serves) take the GIL back after each
# read they wait on, and each such turn cost up to 5 ms: the libraries were
# asked for 0.18 s after the program's bytes were in, 0.1 s with this. A
# switch costs microseconds, and only when a thread waits.
SWITCH_INTERVAL = 0.0005


def _operations(
    indexed: Indexed,
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
            # Handed over, not kept: the merge is their last use, and the
            # entries of a big image are what its first mount would otherwise
            # hold for its life (``mount_tree`` gives their memory back).  An
            # image may list one layer twice: the list is made before letting go.
            found = [indexed.indexes[digest] for digest in indexed.digests]
            indexed.indexes.clear()
            return found
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
        # index_layers checked it; it went missing or was damaged since.
        raise RuntimeError(f"layer {digest}: its index in {layers_dir} is missing or damaged")
    return index


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
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        return _main(argv)
    finally:
        sys.setswitchinterval(switch)
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    args = parse_mount_args(sys.argv[1:] if argv is None else argv)
    # It serves for the mount's life: in its caller's directory, it kept that busy.
    for name in ("mountpoint", "store", "cache_dir", "upper", "work"):
        if (path := getattr(args, name)) is not None:
            setattr(args, name, path.absolute())
    os.chdir("/")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s lazyfs-mount[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    for number in _STOP_SIGNALS:
        signal.signal(number, _Stop.handler)
    with os.fdopen(args.ready_fd, "wb", buffering=0) as ready:
        try:
            if args.upper is not None and args.work is not None:
                # Before the layers are indexed: a writable mount that cannot delete is refused.
                from lazyfs.fs.upper_disk import check_whiteouts

                check_whiteouts(args.upper, args.work)
            indexed = index_layers(
                *(args.store, args.layer, mount_limits(args), args.cache_dir, args.trace),
                args.executable,
                trace_sent=args.trace_sent,
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
            if indexed.remote and not indexed.replaying:
                from lazyfs.fs.predict import attach

                attach(ops, indexed.remote, args.executable)
            symlinks = "cached" if fuse_caps.cache_symlinks(ops) else "asked each time"
            if args.debug:
                from lazyfs.fs.debug import log_requests

                log_requests(ops)
            fuse_caps.read_ahead(ops, args.mountpoint)  # a larger window, from INIT on
            options = mount_options(writable=args.upper is not None, suid=args.suid, dev=args.dev)
            pyfuse3.init(ops, str(args.mountpoint), options)
        except BadImage as error:
            # The layers together (a hardlink to no file, say): refused as indexing refuses.
            log.info("refused to mount %s: %s", args.mountpoint, error)
            _answer(ready, refusal(error))
            return 1
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
        indexed.recorder.finish(mount_ended=True)  # before it settled: marked cut, if kept
    log.info("unmounted %s", args.mountpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
