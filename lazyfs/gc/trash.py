"""The store's ``gc/`` area: what GC removes goes there whole before it is deleted.

Deleting a tree takes many steps; a process killed among them would leave
half a layer at a name the store trusts (a blob, an extracted tree, an
index and the files it promises).  So, as Mesos' docker store does, a
removal first renames the whole entry into ``gc/`` (one atomic rename on
the store's filesystem), makes the rename durable (both directories
fsynced), and only then deletes it there.  A trusted name is whole or
gone; ``gc/`` holds nothing anyone reads, and the next pass (``empty``)
finishes what a killed one left in it.

``Trash.discard`` reports each move to ``on_move`` (the store-relative path
moved), which a caller can log or count.  Blocking.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from lazyfs.store.atomic import sync_directory
from providers.fstree import remove_tree


class Trash:
    def __init__(self, root: Path, gc_dir: Path, on_move: Callable[[str], None] | None = None):
        self.root = root
        self.gc_dir = gc_dir
        self._on_move = on_move
        self._count = 0

    def discard(self, path: Path) -> int:
        """Move ``path`` into gc/, durably, then delete it; the bytes it held (0 if gone).

        An OSError while deleting (after the move) is left for ``empty``
        to finish: the entry is out of every trusted name already.
        """
        try:
            size = _size(path)
        except FileNotFoundError:
            return 0
        self._count += 1
        # Unique within this process and across killed ones (pid), sortable.
        parked = self.gc_dir / f"{os.getpid()}.{self._count}.{path.name}"
        try:
            os.rename(path, parked)
        except FileNotFoundError:
            return 0
        sync_directory(path.parent)
        sync_directory(self.gc_dir)
        if self._on_move is not None:
            self._on_move(str(path.relative_to(self.root)))
        with contextlib.suppress(OSError):
            _delete(parked)
        return size

    def empty(self) -> int:
        """Delete everything in gc/ (a killed pass's leftovers); how many entries."""
        count = 0
        for entry in sorted(self.gc_dir.iterdir()):
            _delete(entry)
            count += 1
        return count


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        remove_tree(path)  # an extracted layer may be deeper than rmtree recurses
    else:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    """Bytes ``path`` takes on disk, a tree's in all (hardlinked files once).

    Iterative (a layer may be deeper than Python recurses); what cannot be
    read is not counted: the figure is for the report only.
    """
    top = path.lstat()
    total = top.st_blocks * 512
    if not stat.S_ISDIR(top.st_mode):
        return total
    seen: set[tuple[int, int]] = set()
    pending = [str(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                        if (info.st_dev, info.st_ino) in seen:
                            continue
                        seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(entry.path)
        except OSError:
            continue
    return total
