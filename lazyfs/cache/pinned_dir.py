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

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class PinnedDir:
    """The directory at ``path`` (absolute) as ``fd`` holds it (O_PATH will do).

    The caller owns ``fd``: open before ``path`` may change, and open as long
    as ``gone`` is asked.
    """

    path: str
    fd: int

    def gone(self) -> str | None:
        """Why ``path`` no longer leads to the directory held, or None while it does.

        Two stats, no more: cheap enough to ask every few seconds. An error
        other than the path's missing (a parent made unreadable, say) is no
        proof: None then, and the next look tells.
        """
        held = os.fstat(self.fd)
        # Removed, even if a new directory at the path got the same inode
        # number (tmpfs and ext4 reuse them): a removed directory has no links.
        if held.st_nlink == 0:
            return f"{self.path} was removed"
        try:
            now = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return f"{self.path} is gone"  # moved away, or a parent removed or moved
        except OSError:
            return None
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            return f"{self.path} is another directory now"
        return None
