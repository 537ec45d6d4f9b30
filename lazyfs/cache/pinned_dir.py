"""Whether a long-lived process's directory is still there: ``PinnedDir``.

The cache daemon (``lazyfs.cache.service``) and the mount server
(``lazyfs.fs.mount_server``) each live in one directory, the cache's and
the store's ``mount-server/``, for up to an hour after their last use. One
whose directory was deleted (a work dir thrown away), or replaced by
another at the same path, can never be found or used again: nothing
connects to a socket that is gone, and the path now leads to another
directory, another process's to own. So each holds a descriptor of its
directory from its start and looks now and then whether the path still
leads there; once it does not, it exits.

Light: the standard library only (the mount server imports it before it
computes its ``code_key``).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class PinnedDir:
    """The directory at ``path`` (absolute) as ``fd`` holds it (O_PATH will do).

    ``path`` as ``fd`` was opened by, not tidied: ``link/..`` leads where the
    link's target's parent is, which ``os.path.abspath`` would make another
    path. The caller owns ``fd``: open before ``path`` may change, and open as
    long as ``gone`` is asked.
    """

    path: str
    fd: int

    @classmethod
    def opened(cls, path: str | os.PathLike[str]) -> PinnedDir:
        """The directory at ``path`` (relative to the working directory), opened now."""
        text = os.fspath(path)
        fd = os.open(text, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(text if os.path.isabs(text) else os.path.join(os.getcwd(), text), fd)

    def gone(self) -> str | None:
        """Why ``path`` no longer leads to the directory held, or None while it does.

        Two stats, no more: cheap enough to ask every few seconds (blocking:
        a hung network filesystem hangs it). An error other than the path's
        missing (a parent made unreadable, say) is no proof: None then, and the
        next look tells.
        """
        removed = f"{self.path} was removed"
        try:
            held = os.fstat(self.fd)
        except OSError as error:  # ESTALE: NFS's word for a directory removed
            return removed if error.errno == errno.ESTALE else None
        try:
            now = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            # Else moved away, or a parent removed or moved.
            return removed if held.st_nlink == 0 else f"{self.path} is gone"
        except OSError as error:
            return removed if error.errno == errno.ESTALE else None
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return f"{self.path} is another directory now"
        # Removed, though a new directory at the path got the same inode number
        # (tmpfs and ext4 reuse them): a removed directory has no links, a new
        # one has. A filesystem that counts none (some FUSE ones) shows 0 for both.
        if held.st_nlink == 0 and now.st_nlink != 0:
            return removed
        return None
