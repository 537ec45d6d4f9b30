"""What a starting daemon finds in its cache directory: the chunks to keep, the rest cleared.

Part of ``lazyfs.cache.chunks``' ``DiskCache.open``: ``take_stock`` clears
``tmp/`` (chunks a crash left half written), the chunks of another chunk
size, and whatever is not a chunk ``put`` could have written, and returns
the chunks that are, for the cache to trust and count. ``make_dirs`` makes
the directories a chunk ``put`` writes goes into, as ``take_stock`` expects.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from lazyfs.cache.layout import ChunkKey, Layout
from providers.private_dir import PRIVATE, private_dir


def take_stock(layout: Layout) -> list[tuple[float, ChunkKey, int]]:
    """Clear what a crash or another chunk size left; each valid chunk's mtime, key, length."""
    shutil.rmtree(layout.tmp_dir, ignore_errors=True)
    private_dir(layout.tmp_dir)
    for other in layout.root.glob("chunks-*"):
        if other != layout.chunks_dir:
            shutil.rmtree(other, ignore_errors=True)
    private_dir(layout.chunks_dir)
    # What is not a directory where the layout has directories is in the way.
    for path in [*layout.chunks_dir.glob("*"), *layout.chunks_dir.glob("*/*")]:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
    found: list[tuple[float, ChunkKey, int]] = []
    for path in sorted(layout.chunks_dir.glob("*/*/*")):
        key = layout.key_of(path)
        st = path.lstat()
        if key is None or not path.is_file() or path.is_symlink():
            _remove(path)
        elif not 0 < st.st_size <= layout.chunk_size:
            path.unlink()  # never written by put: not a chunk to trust
        else:
            found.append((st.st_mtime, key, st.st_size))
    for blob_dir in layout.chunks_dir.glob("*/*"):
        with contextlib.suppress(OSError):
            blob_dir.rmdir()
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def make_dirs(path: Path, top: Path) -> None:
    """Make ``path`` and its missing parents below ``top``, each 0700."""
    if path == top or path.is_dir():
        return
    make_dirs(path.parent, top)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE)
