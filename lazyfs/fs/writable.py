"""pyfuse3 operations for a copy-on-write mount: the merged tree with writes in ``Upper``.

The tree and the upper directory's rules are in ``lazyfs.fs.upper``; the
handlers of names and attributes, and their semantics, in
``lazyfs.fs.writable_names``.  This module adds open files and directories,
a handle per open.  Semantics chosen:

- every handle sees the file's latest bytes, as on a plain filesystem: a
  handle opened read-only while the bytes are in a lower layer reads them
  there until the file is copied up, then opens the upper file for itself
  at its next read.  (Overlayfs instead leaves such a handle on the lower
  file; here that would mix old and new bytes, since the kernel keeps one
  page cache per FUSE inode, which writers update.)  A handle that has an
  upper fd keeps it, so it keeps working after the file is unlinked or
  renamed; a lower file unlinked before its copy-up keeps reading from the
  layer;
- opening for writing (or with O_TRUNC) copies the data up first;
- pages stay cached across opens, since every write goes through this
  mount's page cache;
- lseek SEEK_DATA and SEEK_HOLE answer from the lower file's extents
  until the file is copied up, then as the upper file's filesystem does.

Every handler ends in ``pyfuse3.FUSEError`` (``lazyfs.fs.boundary``).
Blocking file I/O runs in worker threads under ``Upper.limiter``.
``lazyfs.fs.writable_no_open`` serves the same view without open and
opendir (the no-open path, see ``lazyfs.fs.caps``).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs.boundary import fuse_errors
from lazyfs.fs.read_only import read_lower, seek_lower
from lazyfs.fs.upper import Copy, Node, Upper
from lazyfs.fs.writable_names import Listing, WritableNames
from lazyfs.tree.lower import blocks_of
from lazyfs.tree.merge import DataRef, Inode, InodeNo


@dataclass(slots=True)
class _Handle:
    """An open file: its own fd on the upper file, else the lower bytes of the file.

    ``node`` is None for a lower file opened for reading while nothing of it
    had changed (no node kept): ``read`` looks for one made since.
    """

    ino: InodeNo
    node: Node | None
    fd: int | None
    lower: DataRef | None


@dataclass(slots=True)
class _Dir:
    """An open directory: its snapshot, or None for the tree's own listing (``listed``),
    taken by the first ``readdir`` from the start (``taken``)."""

    directory: Node | Inode
    listing: Listing | None = None
    taken: bool = False


class WritableOperations(WritableNames):
    """The copy-on-write view of ``upper``, reading lower bytes through ``chunks``."""

    def __init__(self, upper: Upper, chunks: ChunkCache) -> None:
        super().__init__(upper, chunks)
        self._numbers = itertools.count(1)
        self._files: dict[int, _Handle] = {}
        self._dirs: dict[int, _Dir] = {}

    # -- attributes --------------------------------------------------------------------------

    def attributes(self, node: Node | Inode) -> pyfuse3.EntryAttributes:
        """``WritableNames.attributes``, with a lower sparse file's blocks while not copied up.

        A metadata-only copy reads its bytes from the lower file still, so it
        counts the lower extents too.  A copied-up file counts its size, as
        every file of the upper does (not what the upper's filesystem holds).
        """
        found = super().attributes(node)
        blocks = blocks_of(node.data if isinstance(node, Inode) else node.lower_data)
        if blocks is not None:
            found.st_blocks = blocks
        return found

    def _entry_of(self, ino: int) -> pyfuse3.EntryAttributes | None:
        """``WritableNames._entry_of``, with a lower sparse file's blocks (a readdir's entries)."""
        found = super()._entry_of(ino)
        # None at once in a tree without sparse files: nothing more per entry there.
        blocks = self.upper.tree.sparse_blocks(ino)
        if blocks is not None and found is not None and self.upper.kept(ino) is None:
            found.st_blocks = blocks  # one with a node had ``attributes`` above
        return found

    # -- open files and directories ----------------------------------------------------------

    @fuse_errors
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        fh = next(self._numbers)
        self._dirs[fh] = _Dir(self.upper.view_directory(inode))
        return pyfuse3.FileHandleT(fh)

    @fuse_errors
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        opened = self._dirs.get(fh)
        if opened is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if start_id == 0 or not opened.taken:
            # A snapshot: offsets stay positions in it however the directory changes. From
            # the start again (rewinddir), the directory as it is now, as POSIX asks.
            opened.directory = self.upper.view_directory(opened.directory.ino)
            opened.listing, opened.taken = self.snapshot(opened.directory), True
        for position, name, entry in self.listed(opened.directory, opened.listing, start_id):
            if not pyfuse3.readdir_reply(token, name, entry, position + 1):
                return
            if position >= 2:  # not . or ..: the kernel counts a lookup of each entry
                self._counted(entry)

    @fuse_errors
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)

    @fuse_errors
    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        found = self.upper.view(inode)
        if stat.S_ISDIR(found.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if isinstance(found, Inode) and not writing:
            # A lower file nothing changed: read where the tree says, no node made.
            handle = _Handle(found.ino, None, None, found.data)
            return pyfuse3.FileInfo(fh=self._keep(handle), keep_cache=True)
        node = self.upper.node(inode)
        if flags & os.O_TRUNC and stat.S_ISREG(node.mode):
            await self.upper.truncate(node, 0)  # copies no data
            if ctx.uid != 0:
                # With atomic O_TRUNC (this path) the kernel leaves to us what
                # truncate(2) does to set-id bits for a caller without CAP_FSETID.
                lost = stat.S_ISUID | (stat.S_ISGID if node.mode & stat.S_IXGRP else 0)
                if node.mode & lost:
                    self.upper.set_mode(node, node.mode & ~lost)
        elif writing:
            await self.upper.copy_up_data(node)
        handle = await self._handle(node, writing=writing)
        return pyfuse3.FileInfo(fh=self._keep(handle), keep_cache=not writing)

    async def _handle(self, node: Node, *, writing: bool) -> _Handle:
        if node.copy is not Copy.DATA or not stat.S_ISREG(node.mode):
            return _Handle(node.ino, node, None, node.lower_data)
        mode = os.O_RDWR if writing else os.O_RDONLY
        return _Handle(node.ino, node, self.upper.open_file(node, mode), None)

    def _keep(self, handle: _Handle) -> pyfuse3.FileHandleT:
        fh = next(self._numbers)
        self._files[fh] = handle
        return pyfuse3.FileHandleT(fh)

    def _file(self, fh: int) -> _Handle:
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    def _current(self, fh: int) -> _Handle:
        """``fh``'s handle, given an fd on the upper file if the file was copied up since."""
        handle = self._file(fh)
        if handle.fd is None:
            node = handle.node if handle.node is not None else self.upper.kept(handle.ino)
            if node is not None and node.copy is Copy.DATA and node.names:
                # Copied up since this handle was opened: the lower bytes are stale now.
                handle.node, handle.fd = node, self.upper.open_file(node, os.O_RDONLY)
        return handle

    @fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self._current(fh)
        if handle.fd is not None:
            fd = handle.fd
            return await trio.to_thread.run_sync(
                os.pread, fd, size, off, limiter=self.upper.limiter
            )
        return await read_lower(self.chunks, handle.lower, off, size)

    @fuse_errors
    async def lseek(self, fh: pyfuse3.FileHandleT, off: int, whence: int) -> int:
        """SEEK_DATA or SEEK_HOLE: the upper file's own answer, else the lower file's extents."""
        handle = self._current(fh)
        if handle.fd is not None:
            return await seek_upper(handle.fd, off, whence, self.upper.limiter)
        return seek_lower(handle.lower, off, whence)

    @fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self._file(fh)
        if handle.fd is None or handle.node is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        fd, node = handle.fd, handle.node
        written: int = await trio.to_thread.run_sync(
            os.pwrite, fd, buf, off, limiter=self.upper.limiter
        )
        node.size = max(node.size, off + written)
        self.upper.touch(node)
        return written

    @fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        fd = self._file(fh).fd
        if fd is not None:
            sync = os.fdatasync if datasync else os.fsync
            await trio.to_thread.run_sync(sync, fd, limiter=self.upper.limiter)

    @fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._files.pop(fh, None)
        if handle is not None and handle.fd is not None:
            os.close(handle.fd)

    @fuse_errors
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        mode = stat.S_IFREG | (stat.S_IMODE(mode) & ~ctx.umask)
        node = self.upper.new(parent_inode, name, mode, ctx.uid, ctx.gid)
        handle = await self._handle(node, writing=True)
        return pyfuse3.FileInfo(fh=self._keep(handle)), self._counted(self.attributes(node))

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        """Set ``node``'s size, through ``fh``'s upper fd when it has one (it may be unlinked)."""
        handle = self._files.get(fh) if fh is not None else None
        fd = handle.fd if handle is not None else None
        await self.upper.truncate(node, size, fd)

    def _pin_readers(self, node: Node | None) -> None:
        """Give handles of copied-up ``node`` without an fd one, before a name of it may go.

        Its last name going would leave them nothing to open but stale lower bytes.
        """
        if node is None or node.copy is not Copy.DATA or not stat.S_ISREG(node.mode):
            return
        for handle in self._files.values():
            if handle.ino == node.ino and handle.fd is None:
                handle.node, handle.fd = node, self.upper.open_file(node, os.O_RDONLY)


async def seek_upper(fd: int, off: int, whence: int, limiter: trio.CapacityLimiter) -> int:
    """lseek(SEEK_DATA or SEEK_HOLE) on an upper file, as its filesystem answers it.

    Moves ``fd``'s position, which no handler uses (they pread and pwrite).
    ENXIO is an answer, not a failure: passed on as FUSEError, as any other
    errno lseek(2) gives for these whences (EINVAL where the filesystem has none).
    """
    try:
        found: int = await trio.to_thread.run_sync(os.lseek, fd, off, whence, limiter=limiter)
    except OSError as error:
        if error.errno in (errno.ENXIO, errno.EINVAL):
            raise pyfuse3.FUSEError(error.errno) from None
        raise
    return found
