"""pyfuse3 operations serving an image's lower tree read-only.

The tree is a ``lazyfs.tree.lower.LowerTree``: in a mount, the image's
packed tree file mapped and read in place (``lazyfs.tree.mapped``), so
what this process holds per inode is only what the bounded caches below
keep; a ``MergedTree`` (tests) is served through the same interface.

The tree never changes while mounted, so the kernel is told to keep
everything: entries, negative lookups and attributes for ``CACHE_TIMEOUT``
seconds, and file pages across opens (``keep_cache``).  Directory offsets
are positions in the sorted listing, stable for the life of the mount, so
a readdir reads its entries from the tree from its offset on and keeps
nothing.  Attributes made for the kernel are kept for the inodes asked for
most recently, at most ``ATTRIBUTES_KEPT`` of them: a ``find`` over a
million files does not grow the mount.
File bytes come from ``ChunkCache`` (worker threads, bounded cache); open
file and directory handles are the inode numbers themselves, since nothing
is kept per handle.  ``lseek`` SEEK_DATA and SEEK_HOLE are answered from a
file's extents (``seek_lower``), so hole-aware tools skip a GNU sparse
file's holes without reading them.

``NoOpenReadOnlyOperations`` answers ENOSYS to open and opendir instead
(the no-open path, see ``lazyfs.fs.caps``): the kernel then opens files
and directories itself, sends no open, release, opendir or releasedir, and
keeps directory listings cached too, so a warm tree costs Python nothing.
The handles it sends are the inode numbers as well (the pyfuse3 patch puts
them there), so reading is the same code on both paths.

Writes never reach here (writable mounts are served by
``lazyfs.fs.writable``): the mount is read-only, so the kernel answers
EROFS itself; ``open`` for writing answers EROFS too, for callers that ask
anyway.  Every handler ends in ``pyfuse3.FUSEError`` (``lazyfs.fs.boundary``):
expected answers (ENOENT, ENOTDIR, ENODATA, EROFS) directly, anything
unexpected as EIO after logging its cause once, so nothing else ever
escapes to pyfuse3.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Iterator, Sequence

import pyfuse3

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs.boundary import fuse_errors
from lazyfs.tree.lower import LowerTree, as_lower, blocks_of
from lazyfs.tree.merge import DataRef, Inode, InodeNo, MergedTree
from providers.extents import pieces, seek

log = logging.getLogger(__name__)

# Lower layers never change: a year is "forever" to the kernel's caches.
CACHE_TIMEOUT = 365 * 24 * 3600.0
BLOCK_SIZE = 4096
NAME_MAX = 255
# Enough for the inodes a container's start touches; a bound, not a cache of the tree.
ATTRIBUTES_KEPT = 4096


async def read_lower(chunks: ChunkCache, data: DataRef | None, off: int, size: int) -> bytes:
    """``size`` bytes at ``off`` of a lower file; fewer at its end, b"" past it.

    A sparse file's holes read as zeros and cost no layer read.  Raises
    OSError(EIO) when the layer holds fewer bytes than the index promised:
    the reply is never padded.
    """
    if data is None:
        return b""
    parts = []
    for length, stored in pieces(data.extents, data.size, off, size):
        if stored is None:
            parts.append(bytes(length))
            continue
        got = await chunks.read(data.digest, data.offset + stored, length)
        if len(got) != length:
            raise OSError(errno.EIO, f"layer {data.digest} ended early at {stored + len(got)}")
        parts.append(got)
    read = parts[0] if len(parts) == 1 else b"".join(parts)
    # A first start's prefetch (``lazyfs.fs.predict``); a reader without one has no attribute.
    if off == 0 and (told := getattr(chunks, "on_head", None)) is not None:
        told(data, read)
    return read


def entry_attributes(
    ino: int,
    mode: int,
    nlink: int,
    uid: int,
    gid: int,
    size: int,
    times_ns: tuple[int, int, int],
    *,
    rdev: int = 0,
    timeout: float,
    blocks: int | None = None,
) -> pyfuse3.EntryAttributes:
    """An entry as FUSE wants it, cached by the kernel for ``timeout`` seconds.

    ``times_ns``: atime, mtime and ctime.  ``blocks``: a sparse file's
    st_blocks (``lazyfs.tree.lower.blocks_of``); None for any other entry,
    whose st_blocks is its size in 512-byte units.  Both views build theirs here.
    """
    found = pyfuse3.EntryAttributes()
    found.st_ino = pyfuse3.InodeT(ino)
    found.generation = 0
    found.entry_timeout = found.attr_timeout = timeout
    found.st_mode = pyfuse3.ModeT(mode)
    found.st_nlink = nlink
    found.st_uid, found.st_gid = uid, gid
    found.st_rdev = rdev
    found.st_size = size
    found.st_blksize = BLOCK_SIZE
    # What du, stat and cp --sparse=auto read allocation from: holes take none.
    found.st_blocks = (size + 511) // 512 if blocks is None else blocks
    found.st_atime_ns, found.st_mtime_ns, found.st_ctime_ns = times_ns
    return found


def no_entry(timeout: float) -> pyfuse3.EntryAttributes:
    """A miss the kernel caches for ``timeout`` seconds (inode 0 with a timeout)."""
    missing = pyfuse3.EntryAttributes()
    missing.st_ino = pyfuse3.InodeT(0)
    missing.entry_timeout = timeout
    return missing


def seek_lower(data: DataRef | None, off: int, whence: int) -> int:
    """lseek(SEEK_DATA or SEEK_HOLE) in a lower file, from its extents alone.

    A GNU sparse file's holes are where its sparse map says; any other file
    is all data.  FUSEError(ENXIO) where lseek(2) fails so, EINVAL for
    another whence (the kernel sends only these two).
    """
    try:
        found = seek(
            None if data is None else data.extents, 0 if data is None else data.size, off, whence
        )
    except ValueError:
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    if found is None:
        raise pyfuse3.FUSEError(errno.ENXIO)
    return found


class ReadOnlyOperations(pyfuse3.Operations):
    """The read-only view of ``tree``, reading file bytes through ``chunks``."""

    def __init__(self, tree: MergedTree | LowerTree, chunks: ChunkCache) -> None:
        super().__init__()
        self.tree = as_lower(tree)
        self.chunks = chunks
        self._attributes: dict[InodeNo, pyfuse3.EntryAttributes] = {}
        self._used_blocks: int | None = None

    # -- helpers ------------------------------------------------------------------

    def _inode(self, inode: int) -> Inode:
        found = self.tree.inode(inode)
        if found is None:
            # The kernel only asks for inodes we gave it; this one is stale.
            raise pyfuse3.FUSEError(errno.ENOENT)
        return found

    def attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        """The entry of ``inode`` as FUSE wants it; kept for the latest ``ATTRIBUTES_KEPT``."""
        found = self._attributes.get(inode.ino)
        if found is None:
            if len(self._attributes) >= ATTRIBUTES_KEPT:
                # Dropped whole, not one by one: cheaper than an LRU, and as bounded.
                self._attributes.clear()
            found = self._attributes[inode.ino] = entry_attributes(
                inode.ino,
                inode.mode,
                inode.nlink,
                inode.uid,
                inode.gid,
                inode.size,
                (inode.mtime_ns,) * 3,
                rdev=inode.rdev,
                timeout=CACHE_TIMEOUT,
                blocks=blocks_of(inode.data),  # the Inode holds its extents already
            )
        return found

    def listing(
        self, directory: InodeNo, start: int = 0
    ) -> Iterator[tuple[pyfuse3.FileNameT, pyfuse3.EntryAttributes]]:
        """A directory's entries as readdir sends them from ``start`` on, ``.`` and ``..`` first.

        Read from the tree as they are sent, nothing kept: the mapped tree
        answers in a few microseconds an entry.  KeyError for no directory.
        """
        dots = ((b".", InodeNo(directory)), (b"..", self.tree.parent(directory)))
        rest = self.tree.entries(directory, max(start - len(dots), 0))
        for name, child in itertools.chain(dots[start:], rest):
            found = self.tree.inode(child)
            assert found is not None  # a tree's listings name its own inodes
            yield pyfuse3.FileNameT(name), self.attributes(found)

    # -- the handlers ---------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._inode(parent_inode)
        if not stat.S_ISDIR(parent.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return self.attributes(parent)
        if len(name) > NAME_MAX:
            # As any filesystem (overlayfs too) answers, not a mere ENOENT.
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        found = self.tree.lookup(InodeNo(parent_inode), name)
        if found is None:
            return no_entry(CACHE_TIMEOUT)
        return self.attributes(self._inode(found))

    @fuse_errors
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(self._inode(inode))

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """Nothing to drop: every inode lives as long as the mount."""

    @fuse_errors
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        found = self._inode(inode)
        if not stat.S_ISLNK(found.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileNameT(found.target)

    @fuse_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if not stat.S_ISDIR(self._inode(inode).mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    @fuse_errors
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        """Entries after position ``start_id``; the next id of an entry is its position + 1."""
        for position, (name, entry) in enumerate(self.listing(InodeNo(fh), start_id), start_id):
            if not pyfuse3.readdir_reply(token, name, entry, position + 1):
                return  # the kernel's buffer is full; it asks again from here

    @fuse_errors
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        """Directory handles hold nothing."""

    @fuse_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        found = self._inode(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if stat.S_ISDIR(found.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)

    @fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        """``size`` bytes at ``off``; fewer at the end of the file, b"" past it."""
        return await read_lower(self.chunks, self._inode(fh).data, off, size)

    @fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        """File handles hold nothing."""

    @fuse_errors
    async def lseek(self, fh: pyfuse3.FileHandleT, off: int, whence: int) -> int:
        """Where SEEK_DATA or SEEK_HOLE from ``off`` lands; no byte of the file is read."""
        return seek_lower(self._inode(fh).data, off, whence)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        stats = pyfuse3.StatvfsData()
        if self._used_blocks is None:  # the tree never changes: count once
            self._used_blocks = self.tree.data_blocks()
        used = self._used_blocks
        stats.f_bsize = stats.f_frsize = BLOCK_SIZE
        stats.f_blocks = used
        stats.f_bfree = stats.f_bavail = 0
        stats.f_files = len(self.tree.inodes)
        stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = NAME_MAX
        return stats

    @fuse_errors
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        for key, value in self._inode(inode).xattrs:
            if key == name:
                return value
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @fuse_errors
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(key) for key, _ in self._inode(inode).xattrs]


class NoOpenReadOnlyOperations(ReadOnlyOperations):
    """``ReadOnlyOperations`` on the no-open path: the kernel opens files and directories itself.

    Only for a pyfuse3 that passes the inode as the handle (``lazyfs.fs.caps``).
    Nothing is lost by not seeing opens: the mount is ``ro``, so the kernel
    refuses opens for writing before they would reach here.
    """

    @fuse_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        raise pyfuse3.FUSEError(errno.ENOSYS)
