"""The daemon's fetcher over a disk cache of its own, in process (``lazyfs.cache.flight``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from lazyfs.cache.chunks import DiskCache
from lazyfs.cache.flight import Fetcher


@asynccontextmanager
async def fetcher_over(tmp_path: Path, chunk_size: int) -> AsyncIterator[Fetcher]:
    """A Fetcher over a new cache in ``tmp_path`` of ``chunk_size`` chunks, reading nothing
    ahead; its fetches are cancelled on the way out."""
    root = tmp_path / "cache"
    root.mkdir()
    with DiskCache.open(root, 1 << 30, chunk_size=chunk_size) as cache:
        async with trio.open_nursery() as nursery:
            yield Fetcher(cache, nursery, readahead=(0, 0))
            nursery.cancel_scope.cancel()
