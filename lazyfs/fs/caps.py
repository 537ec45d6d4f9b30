"""Whether a mount process serves without open and opendir (the no-open path), decided at start.

When ``open`` and ``opendir`` answer ENOSYS, the kernel stops sending
open, release, opendir and releasedir for the whole mount and keeps pages
and directory listings cached (``FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR``);
requests on such files carry handle 0.  Stock pyfuse3 passes that 0 on,
which names no file; the pyfuse3 that ``scripts/setup`` builds with the
patch in ``scripts/pyfuse3/`` (see ``docs/pyfuse3-patch.md``) passes the
inode instead and says so with ``pyfuse3.NO_OPEN_PASSES_INODE``.  The kernel
skips opens since Linux 4.20 and opendirs since 5.1.

``LAZYFS_FUSE_NO_OPEN`` chooses: unset or empty, the no-open path wherever
it works; ``0``, today's path with handles; ``1``, the no-open path or a
clear error where it cannot work (tests use both to run on each path).

Apart from that path, ``read_ahead`` has the mount read ahead a larger
window than the kernel's default (``lazyfs.fs.kernel_read_ahead``), from
its first request on where pyfuse3 can answer INIT with it (patch 0004,
``Operations.max_readahead``), else from soon after.  And
``cache_symlinks`` asks the kernel to keep the targets ``readlink``
answers (``FUSE_CAP_CACHE_SYMLINKS``, Linux 4.20), on both paths and both
views: no symlink of a mount ever changes its target (a new target is a
new inode, on a writable mount too), and a container's start resolves
the same few (``/lib``, ``/bin``, ``python3``) again and again.
The pyfuse3 that ``scripts/setup`` builds has ``Operations.enable_cache_symlinks``
for it (patch 0002); a stock one has not and never sees the attribute, so
its mounts answer every readlink as before.  ``lseek`` (SEEK_DATA and
SEEK_HOLE, patch 0006) needs no looking for: the operations define it on
every path, and a stock pyfuse3 never calls it (the kernel then answers
as if files had no holes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import pyfuse3

from lazyfs.fs import kernel_read_ahead
from providers.errors import UsageError

ENV = "LAZYFS_FUSE_NO_OPEN"
MARKER = "NO_OPEN_PASSES_INODE"
CACHE_SYMLINKS = "enable_cache_symlinks"
# no_opendir came in 5.1 (no_open in 4.20): both are needed.
KERNEL_MIN = (5, 1)


def pyfuse3_skips_open(module: ModuleType = pyfuse3) -> bool:
    """Whether ``module`` (pyfuse3) passes the inode when a request's handle is 0."""
    return getattr(module, MARKER, False) is True


def kernel_skips_open(release: str) -> bool:
    """Whether a kernel of ``release`` (``os.uname().release``) skips open and opendir."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return found is not None and (int(found[1]), int(found[2])) >= KERNEL_MIN


def why_not(module: ModuleType = pyfuse3, release: str | None = None) -> str | None:
    """Why the no-open path cannot work here, or None when it can."""
    if not pyfuse3_skips_open(module):
        return (
            f"pyfuse3 {getattr(module, '__version__', '?')} lacks the patch lazyfs carries"
            " (scripts/setup builds it; see docs/pyfuse3-patch.md)"
        )
    release = os.uname().release if release is None else release
    if not kernel_skips_open(release):
        wanted = ".".join(map(str, KERNEL_MIN))
        return f"kernel {release} is older than {wanted}"
    return None


def no_open(
    environ: Mapping[str, str] = os.environ,
    module: ModuleType = pyfuse3,
    release: str | None = None,
) -> bool:
    """Whether this mount process takes the no-open path (see the module docstring).

    Raises UsageError when ``LAZYFS_FUSE_NO_OPEN`` is neither unset, empty,
    ``0`` nor ``1``, or is ``1`` where the path cannot work.
    """
    asked = environ.get(ENV, "")
    if asked not in ("", "0", "1"):
        raise UsageError(f"{ENV} must be 0 or 1, not {asked!r}")
    if asked == "0":
        return False
    reason = why_not(module, release)
    if reason is not None and asked == "1":
        raise UsageError(f"{ENV}=1 but the no-open path cannot work here: {reason}")
    return reason is None


def pyfuse3_caches_symlinks(module: ModuleType = pyfuse3) -> bool:
    """Whether ``module`` (pyfuse3) can ask the kernel to cache symlink targets."""
    return isinstance(getattr(getattr(module, "Operations", None), CACHE_SYMLINKS, None), bool)


def cache_symlinks(ops: pyfuse3.Operations, module: ModuleType = pyfuse3) -> bool:
    """Have the mount of ``ops`` keep symlink targets in the kernel, where pyfuse3 can ask it.

    Whether it was asked for; the kernel grants it from Linux 4.20 on.
    """
    if not pyfuse3_caches_symlinks(module):
        return False
    setattr(ops, CACHE_SYMLINKS, True)  # read by pyfuse3 when the kernel's init comes
    return True


def pyfuse3_answers_read_ahead(module: ModuleType = pyfuse3) -> bool:
    """Whether ``module`` (pyfuse3) answers INIT with ``Operations.max_readahead`` (patch 0004)."""
    return hasattr(getattr(module, "Operations", None), kernel_read_ahead.MAX_READAHEAD)


def read_ahead(
    ops: pyfuse3.Operations, mountpoint: Path, kib: int = kernel_read_ahead.READ_AHEAD_KIB
) -> None:
    """Have the mount of ``ops`` read ahead ``kib`` KiB (``lazyfs.fs.kernel_read_ahead``).

    From its first request on where pyfuse3 can answer INIT with it, else
    from soon after.  Call before the mount.
    """
    kernel_read_ahead.after_init(ops, mountpoint, kib, answered=pyfuse3_answers_read_ahead())
