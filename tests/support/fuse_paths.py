"""The two paths a FUSE mount can take (``lazyfs.fs.caps``), for tests that run on each.

``no-open``: open and opendir answer ENOSYS and every request names its file
by inode; it needs the patched pyfuse3 for real mounts (and skips without it,
which fails under CI).  ``open``: today's path, with a handle per open.

Real mounts choose through ``LAZYFS_FUSE_NO_OPEN``, which the mount process
inherits (``choose``).  In-process tests call the operations directly, so on
the no-open path they go through ``NoOpenKernel``, which does what the kernel
and the patched pyfuse3 do once open answered ENOSYS.
"""

from __future__ import annotations

import errno
import os
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pyfuse3
import pytest

from lazyfs.fs import caps as fuse_caps

NO_OPEN, OPEN = "no-open", "open"
PATHS = (NO_OPEN, OPEN)


def choose(path: str, setenv: Callable[[str, str], None]) -> None:
    """Make mount processes started from now on take ``path``; skip where it cannot run."""
    if path == NO_OPEN:
        reason = fuse_caps.why_not()
        if reason is not None:
            pytest.skip(f"the no-open path cannot run here: {reason}")
    setenv(fuse_caps.ENV, "1" if path == NO_OPEN else "0")


def setattr_fields(*which: str) -> pyfuse3.SetattrFields:
    """The fields of a setattr call (pyfuse3's own cannot be made outside it)."""
    every = ("size", "mode", "uid", "gid", "atime", "mtime", "ctime")
    fields = SimpleNamespace(**{f"update_{f}": f in which for f in every})
    return cast(pyfuse3.SetattrFields, fields)


class NoOpenKernel:
    """Operations as the kernel drives them once ``open`` and ``opendir`` answered ENOSYS.

    ``open`` and ``opendir`` ask the operations first; on ENOSYS the kernel
    opens by itself: the handle is the inode (the patched pyfuse3 passes it
    for the kernel's 0), ``O_TRUNC`` becomes a setattr of size 0 (atomic
    O_TRUNC is off), and no release or releasedir follows.  Every other
    attribute is the operations' own.
    """

    def __init__(self, ops: pyfuse3.Operations) -> None:
        self.ops = ops
        self._unreleased: Counter[int] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ops, name)

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        try:
            info: pyfuse3.FileInfo = await self.ops.open(inode, flags, ctx)
            return info
        except pyfuse3.FUSEError as error:
            if error.errno != errno.ENOSYS:
                raise
        if flags & os.O_TRUNC:
            attr = pyfuse3.EntryAttributes()
            attr.st_size = 0
            await self.ops.setattr(inode, attr, setattr_fields("size"), None, ctx)
        self._unreleased[inode] += 1
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode))

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        try:
            # Any: the patched pyfuse3 lets opendir return a FileInfo too; ours never does.
            fh: Any = await self.ops.opendir(inode, ctx)
            return pyfuse3.FileHandleT(fh)
        except pyfuse3.FUSEError as error:
            if error.errno != errno.ENOSYS:
                raise
        self._unreleased[inode] += 1
        return pyfuse3.FileHandleT(inode)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        if not self._skip(fh):
            await self.ops.release(fh)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        if not self._skip(fh):
            await self.ops.releasedir(fh)

    def _skip(self, fh: int) -> bool:
        """Whether ``fh`` was opened by the kernel alone, so its release is never sent."""
        if self._unreleased[fh] <= 0:
            return False
        self._unreleased[fh] -= 1
        return True
