"""What a lazy mount fetches before it is ready, on a terminal: a bar per remote layer.

A layer left in its registry (``lazyfs.provision.lazy``) is read by the
mount process through the cache daemon: its eStargz footer and TOC, then
the files before its prefetch landmark, then, with background fetch, the
rest. Those bytes are fetched by other processes and land in the daemon's
cache, so this watches from outside: while the mount comes up it asks the
daemon for its status (``lazyfs.cache.client.status``) a few times a
second and shows each remote layer's cached bytes out of its size, with
their total when there are several (``lazyfs.progress``). Once the mount is
ready it says how much of the image is local (its layers in the store, and
what the cache holds of the others) and how much is still remote.

Only on a terminal: where stderr is no terminal the daemon is asked
nothing more and its client is not even loaded.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lazyfs.fs.mount import RemoteAware
from lazyfs.progress import Progress, human_size
from providers.digest import Digest
from providers.manifest import ImageManifest
from providers.source import LocalBlobSource

if TYPE_CHECKING:
    from lazyfs.cache.values import StatusOk

POLL_INTERVAL = 0.2  # seconds between two questions to the daemon


class LazyView:
    """The remote layers of one image and what the cache holds of each, as bars."""

    def __init__(self, manifest: ImageManifest, remote: Mapping[Digest, int], progress: Progress):
        self.manifest = manifest
        self.remote = dict(remote)  # digest -> size
        self.progress = progress
        self.cached = dict.fromkeys(self.remote, 0)
        self.background: bool | None = None  # None: the daemon never answered

    def start(self) -> None:
        for digest, size in self.remote.items():
            self.progress.start(digest, size)

    def seen(self, status: StatusOk) -> None:
        """Move each remote layer's bar to what ``status`` says the cache holds of it."""
        self.background = status.background_fetch
        for blob in status.blobs:
            if blob.digest in self.remote:
                now = min(blob.cached_bytes, self.remote[blob.digest])
                # Negative when chunks were evicted meanwhile: the bar goes back too.
                self.progress.advance(blob.digest, now - self.cached[blob.digest])
                self.cached[blob.digest] = now

    def summary(self) -> str:
        """How much of the image is local, how much remote, and how the rest comes."""
        total = sum(layer.size for layer in self.manifest.layers)
        local = sum(
            self.cached[layer.digest] if layer.digest in self.remote else layer.size
            for layer in self.manifest.layers
        )
        share = local * 100 // total if total else 100
        remote = total - local
        if not remote:  # the cache had it all by the time the mount was ready: no rest to come
            return f"lazyfs: {human_size(local)} local ({share}%), nothing remote"
        line = f"lazyfs: {human_size(local)} local ({share}%), {human_size(remote)} remote"
        if self.background is None:  # the daemon never answered: how the rest comes is unknown
            return line
        return line + (", fetching in the background" if self.background else ", read on demand")


@contextlib.contextmanager
def lazy_progress(
    blobs: LocalBlobSource, manifest: ImageManifest, progress: Progress | None
) -> Iterator[None]:
    """Show, while the block mounts ``manifest`` from ``blobs``, what its remote layers fetch.

    Nothing unless ``blobs`` leaves layers remote and ``progress`` draws (a
    terminal). After a block that succeeds, the bars are drawn a last time
    and the summary line follows; after one that fails, only the bars end.
    """
    remote = blobs.remote if isinstance(blobs, RemoteAware) else None
    if progress is None or not progress.enabled or remote is None:
        yield
        return
    sizes = {
        layer.digest: layer.size for layer in manifest.layers if layer.digest in remote.origins
    }
    if not sizes:
        yield
        return
    view = LazyView(manifest, sizes, progress)
    view.start()
    stop = threading.Event()
    cache_dir = remote.daemon.cache_dir
    # A thread, not a trio task: ``lazyfs mount`` starts its mount process
    # blocking in trio's own thread, which no task would get to run beside.
    watcher = threading.Thread(target=_watch, args=(view, cache_dir, stop), daemon=True)
    watcher.start()
    try:
        yield
    except BaseException:
        stop.set()
        watcher.join()
        progress.finish()
        raise
    stop.set()
    watcher.join()
    _ask(view, cache_dir)  # what the mount fetched before it said ready
    progress.finish()
    progress.message(view.summary())


def _watch(view: LazyView, cache_dir: Path, stop: threading.Event) -> None:
    while not stop.wait(POLL_INTERVAL):
        _ask(view, cache_dir)


def _ask(view: LazyView, cache_dir: Path) -> None:
    # Loaded here: only a terminal's command watches, and pays for the client.
    from lazyfs.cache.client import status
    from lazyfs.cache.framing import ProtocolError

    # The daemon is not up yet (the mount starts it), or busy: ask again next time.
    with contextlib.suppress(OSError, ProtocolError):
        view.seen(status(cache_dir, timeout=1.0))
