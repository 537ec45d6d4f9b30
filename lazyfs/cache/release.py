"""Letting a removed layer's blob go from the chunk cache: ``Releasing``, a part of ``DiskCache``.

When image GC, ``images rm`` or ``prune`` remove a layer, nothing on the
machine wants its blob's chunks any more (``lazyfs.cache.forget``), and the
user who removed it expects the room back now, not whenever eviction comes
to them. ``release`` evicts them at once, as eviction would: a chunk pinned
by the daemon (a reader's answer being built, a blob being judged) or read
by a mount right now (its shared flock) stays, for eviction to take later.

A background fetch, prefetch or replay of the blob may be under way; were
it left to go on, it would bring the blob back whole. So a released blob is
refused: its next chunk's write raises NotFound, which stops the fetch that
brought it (a background fetch then stays partial). The refusal ends when a
request names the blob again (``want``): a new mount of an image pulled again.

Separate from ``lazyfs.cache.chunks`` for its size only: it works on
``DiskCache``'s own state, under its mutex, so that a chunk's write is either
in place before a release lists the blob's chunks, or refused.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from typing import Any

from lazyfs.cache.layout import ChunkFiles, ChunkKey
from providers.digest import Digest
from providers.errors import NotFound

UNWANTED_KEPT = 4096  # blobs remembered as released: older ones' fetches are long stopped


class Releasing:
    """``DiskCache``'s ``release``, ``want`` and ``unwanted``; thread-safe, blocking."""

    # DiskCache's, set by its __init__.
    files: ChunkFiles
    _mutex: threading.Lock
    _lru: OrderedDict[ChunkKey, Any]
    _pins: Counter[ChunkKey]

    def __init__(self) -> None:
        self._unwanted: dict[Digest, None] = {}  # released blobs, oldest first

    def _evict(self, key: ChunkKey) -> None:
        raise NotImplementedError  # DiskCache's: unlink unless a mount reads it; mutex held

    def release(self, digest: Digest) -> tuple[int, int]:
        """Evict blob ``digest``'s chunks now, but for those pinned or being read, and write
        none again until ``want``. Returns the chunks and the bytes (blocks) evicted."""
        with self._mutex:  # after any write that found it wanted: its chunk is listed below
            self._unwanted[digest] = None
            if len(self._unwanted) > UNWANTED_KEPT:
                del self._unwanted[next(iter(self._unwanted))]
        chunks = freed = 0
        for key in list(self.files.blob_chunks(digest)):
            with self._mutex:
                entry = self._lru.get(key)
                if entry is None or self._pins.get(key):
                    continue
                self._evict(key)
                if key not in self._lru:
                    chunks, freed = chunks + 1, freed + entry.charged
        return chunks, freed

    def want(self, digest: Digest) -> None:
        """Cache blob ``digest`` again: a request names it. Cheap when it was not released."""
        if digest in self._unwanted:
            with self._mutex:
                self._unwanted.pop(digest, None)

    def unwanted(self, digest: Digest) -> bool:
        """Whether ``digest`` was released and not wanted since."""
        return digest in self._unwanted

    def _refuse_unwanted(self, key: ChunkKey) -> None:
        """Raise NotFound for a chunk of a released blob; the mutex held."""
        if key.digest in self._unwanted:
            raise NotFound(f"blob {key.digest} was removed from the cache", digest=key.digest)
