"""Writing a chunk's bytes to a temporary file, durably, before it is renamed into place.

Part of ``lazyfs.cache.chunks.DiskCache.put``, which renames the file into the
cache under its name and accounts for it. Blocking (fsync).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_tmp(tmp_dir: Path, data: bytes) -> tuple[Path, float]:
    """A new file in ``tmp_dir`` holding ``data``, fsynced; with its mtime. Nothing left on
    failure."""
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="chunk.")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        # The data reaches the disk before the name does: after a crash
        # the chunk is whole or absent, never a file of zeros. The rename
        # itself need not be durable (a lost chunk is fetched again), so
        # the directory is not fsynced.
        os.fsync(fd)
        return Path(name), os.fstat(fd).st_mtime
    except BaseException:
        os.unlink(name)
        raise
    finally:
        os.close(fd)
