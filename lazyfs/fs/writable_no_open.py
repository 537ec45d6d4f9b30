"""The copy-on-write view on the no-open path: every request names its file by inode.

``NoOpenWritableOperations`` answers ENOSYS to open and opendir, so the
kernel opens files and directories itself and sends no open, release,
opendir or releasedir (and, after the first, no flush): a lower file that
is only read costs Python nothing once its pages are cached.  With the
patched pyfuse3 (``lazyfs.fs.caps``) the handle of every request is the
inode number, so what today's path (``lazyfs.fs.writable``) keeps per
handle is kept per inode here.  Semantics, the same as today's path's
where not said otherwise:

- data is copied up by the first request that changes it, not at open: a
  write copies the bytes up, a truncate copies none (``O_TRUNC`` arrives
  as a setattr of size 0: ``enable_atomic_o_trunc`` is off, or the kernel
  would keep it to itself), a metadata change makes a metacopy.  An open
  for writing that never writes copies nothing;
- a read goes wherever the bytes are now: the lower layer until they are
  copied up, the upper file after, so every open file sees a copy-up at
  once, as the kernel's one page cache per inode does;
- a copied-up file losing its last name (unlink, or a rename over it)
  keeps an fd on its upper file (``_pinned``) until the kernel forgets the
  inode, so a process that has it open keeps reading and writing it.  A
  file whose bytes were still in a lower layer keeps reading them there;
  its first write copies them into an anonymous file in ``work``;
- a directory offset is a listing's generation and a position in it:
  readdir at offset 0 takes a snapshot of the directory, later offsets
  continue in it, so entries added or removed meanwhile never make another
  one skipped or listed twice; a name gone since is left out
  (``WritableNames.listed``).  Readers starting while the directory is as
  its newest snapshot has it share that snapshot.  A directory nothing
  changed (no node kept) is read from the tree's own listing, which never
  changes: generation 0, no snapshot taken.  The kernel caches the
  listing, and drops it when the directory changes through the mount.  A
  reader whose listing is gone (a directory of generation 0 changed since,
  or its snapshot dropped: the last ``SNAPSHOTS`` are kept) goes on after
  the last name it was given, in the listing a reader starting now would
  read: every listing is in one order (``listing_order``).  The tree's
  listing says which name that was; for a snapshot it is remembered
  (``RESUMES`` of them), else the reader goes on at the same position;
- a created file's handle is its inode too (create still opens, so the
  kernel sends a release for it, which has nothing to do).
"""

from __future__ import annotations

import bisect
import errno
import itertools
import os
import stat
import tempfile

import pyfuse3
import trio

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs.boundary import fuse_errors
from lazyfs.fs.read_only import read_lower, seek_lower
from lazyfs.fs.upper import Copy, Node, Upper
from lazyfs.fs.upper_copy import copy_lower_into
from lazyfs.fs.writable import WritableOperations, seek_upper
from lazyfs.fs.writable_names import Listing, listing_order
from lazyfs.tree.merge import Inode, InodeNo

SNAPSHOTS = 64
# And at most this many entries in them all, but the newest: snapshots of a big
# directory changed between readers would each be a copy of it (70 bytes or so
# an entry), 64 of them for a container that adds a file before each listing.
SNAPSHOT_ENTRIES = 1 << 18
RESUMES = 16 * SNAPSHOTS
_POSITION_BITS = 32
_POSITIONS = (1 << _POSITION_BITS) - 1
_GENERATIONS = (1 << 31) - 1  # offsets are signed 64-bit: keep them positive
_COPY_BLOCK = 1 << 20


class NoOpenWritableOperations(WritableOperations):
    """``WritableOperations`` on the no-open path (see the module docstring)."""

    # Read by the patched pyfuse3 at init: O_TRUNC must reach us as a setattr.
    enable_atomic_o_trunc = False

    def __init__(self, upper: Upper, chunks: ChunkCache) -> None:
        super().__init__(upper, chunks)
        self._pinned: dict[InodeNo, int] = {}
        self._snapshots: dict[tuple[InodeNo, int], Listing] = {}
        self._held = 0  # entries in them
        self._newest: dict[InodeNo, int] = {}  # each directory's newest snapshot's generation
        # The name a reader of (directory, generation) was last given, by the position after it.
        self._last_names: dict[tuple[InodeNo, int, int], bytes] = {}
        self._generations = itertools.count(1)

    # -- what the kernel does itself here -----------------------------------------------

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

    @fuse_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        """Only created files are released, and their handle holds nothing."""

    @fuse_errors
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        """Never sent once opendir answered ENOSYS."""

    # -- created files and forgotten inodes ------------------------------------------------

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
        entry = self._counted(self.attributes(node))
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(node.ino)), entry

    def _forgotten(self, ino: InodeNo) -> None:
        """Also let go of the pinned fd of an inode the kernel no longer knows."""
        fd = self._pinned.pop(ino, None)
        if fd is not None:
            os.close(fd)
        super()._forgotten(ino)

    # -- directories ----------------------------------------------------------------------

    @fuse_errors
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        directory = self.upper.view_directory(fh)
        generation, position = start_id >> _POSITION_BITS, start_id & _POSITIONS
        listing: Listing | None = None  # generation 0: the tree's own listing, never dropped
        if start_id == 0:
            generation, listing = self._listing_now(directory)
        elif generation != 0 or isinstance(directory, Node):
            # A snapshot's offset, or the tree listing's of a directory changed since.
            listing = self._snapshots.get((directory.ino, generation))
            if listing is None:
                generation, listing, position = self._resumed(directory, generation, position)
        if listing is not None:
            self._keep_snapshot(directory.ino, generation, listing)
        last: tuple[int, bytes] | None = None
        for index, name, entry in self.listed(directory, listing, position):
            next_id = generation << _POSITION_BITS | (index + 1)
            if not pyfuse3.readdir_reply(token, name, entry, next_id):
                break
            if index >= 2:  # not . or ..: the kernel counts a lookup of each entry
                self._counted(entry)
                last = index + 1, name
        if last is not None and generation != 0:
            self._remember(directory.ino, generation, *last)

    def _listing_now(self, directory: Node | Inode) -> tuple[int, Listing | None]:
        """The generation and listing a reader starting now reads: 0, None for the tree's own.

        The directory's newest snapshot if nothing changed since, else a new one.
        """
        if not isinstance(directory, Node):
            return 0, None
        generation = self._newest.get(directory.ino, 0)
        listing = self._snapshots.get((directory.ino, generation))
        if listing is not None and _same(listing, directory.children or {}):
            return generation, listing
        while generation == 0 or (directory.ino, generation) in self._snapshots:
            generation = next(self._generations) & _GENERATIONS  # 0 is the tree's listing's
        self._newest[directory.ino] = generation
        return generation, self.snapshot(directory)

    def _resumed(
        self, directory: Node | Inode, generation: int, position: int
    ) -> tuple[int, Listing | None, int]:
        """Where a reader at ``position`` of a listing gone goes on: generation, listing, position.

        After the last name it was given, in the listing a reader starting now
        reads; at the same position if that name is not known.
        """
        last = self._name_before(directory.ino, generation, position)
        generation, listing = self._listing_now(directory)
        if last is not None:
            names = listing if listing is not None else list(self.upper.tree.entries(directory.ino))
            position = 2 + bisect.bisect_right(names, os.fsdecode(last), key=listing_order)
        return generation, listing, position

    def _name_before(self, ino: InodeNo, generation: int, position: int) -> bytes | None:
        """The name a reader at ``position`` of ``generation`` was given last, if known.

        None at positions up to 2 (``.`` and ``..``), which are the same in any listing.
        """
        if position <= 2:
            return None
        if generation != 0:
            return self._last_names.get((ino, generation, position))
        try:  # the tree's listing never changes: position p comes after its entry p - 3
            found = next(self.upper.tree.entries(ino, position - 3), None)
        except KeyError:  # an offset made up: the tree has no such directory
            return None
        return None if found is None else found[0]

    def _keep_snapshot(self, ino: InodeNo, generation: int, listing: Listing) -> None:
        """``listing`` kept as the snapshot used last; the oldest dropped past ``SNAPSHOTS``
        or ``SNAPSHOT_ENTRIES`` (a reader of one dropped goes on after the last name it had)."""
        self._held -= len(self._snapshots.pop((ino, generation), ()))
        self._snapshots[ino, generation] = listing
        self._held += len(listing)
        while len(self._snapshots) > SNAPSHOTS or (
            self._held > SNAPSHOT_ENTRIES and len(self._snapshots) > 1
        ):
            dropped = next(iter(self._snapshots))
            self._held -= len(self._snapshots.pop(dropped))
            if self._newest.get(dropped[0]) == dropped[1]:
                del self._newest[dropped[0]]

    def _remember(self, ino: InodeNo, generation: int, position: int, name: bytes) -> None:
        """That a reader at ``position`` of ``generation`` was given ``name`` last."""
        self._last_names.pop((ino, generation, position), None)
        self._last_names[ino, generation, position] = name
        while len(self._last_names) > RESUMES:
            del self._last_names[next(iter(self._last_names))]

    # -- file data ------------------------------------------------------------------------

    def _upper_fd(self, node: Node, mode: int) -> tuple[int, bool]:
        """An fd on ``node``'s upper file, and whether the caller must close it.

        Opened here, without yielding, so no rename moves another file into
        the path between finding and opening it.
        """
        pinned = self._pinned.get(node.ino)
        if pinned is not None:
            return pinned, False
        return self.upper.open_file(node, mode), True

    @fuse_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        node = self.upper.view(fh)
        if isinstance(node, Inode):  # a lower file nothing changed
            return await read_lower(self.chunks, node.data, off, size)
        if node.copy is not Copy.DATA or not stat.S_ISREG(node.mode):
            return await read_lower(self.chunks, node.lower_data, off, size)
        fd, owned = self._upper_fd(node, os.O_RDONLY)
        try:
            return await trio.to_thread.run_sync(
                os.pread, fd, size, off, limiter=self.upper.limiter
            )
        finally:
            if owned:
                os.close(fd)

    @fuse_errors
    async def lseek(self, fh: pyfuse3.FileHandleT, off: int, whence: int) -> int:
        node = self.upper.view(fh)
        if isinstance(node, Inode):  # a lower file nothing changed
            return seek_lower(node.data, off, whence)
        if node.copy is not Copy.DATA or not stat.S_ISREG(node.mode):
            return seek_lower(node.lower_data, off, whence)
        fd, owned = self._upper_fd(node, os.O_RDONLY)
        try:
            return await seek_upper(fd, off, whence, self.upper.limiter)
        finally:
            if owned:
                os.close(fd)

    @fuse_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        node = self.upper.node(fh)
        if not stat.S_ISREG(node.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        await self._copy_up_for_writing(node)
        fd, owned = self._upper_fd(node, os.O_WRONLY)
        try:
            written: int = await trio.to_thread.run_sync(
                os.pwrite, fd, buf, off, limiter=self.upper.limiter
            )
        finally:
            if owned:
                os.close(fd)
        node.size = max(node.size, off + written)
        self.upper.touch(node)
        return written

    @fuse_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        node = self.upper.view(fh)
        if isinstance(node, Inode) or node.copy is not Copy.DATA or not stat.S_ISREG(node.mode):
            return  # nothing of it written in upper
        fd, owned = self._upper_fd(node, os.O_RDONLY)
        try:
            sync = os.fdatasync if datasync else os.fsync
            await trio.to_thread.run_sync(sync, fd, limiter=self.upper.limiter)
        finally:
            if owned:
                os.close(fd)

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        if stat.S_ISREG(node.mode) and not node.names and node.copy is not Copy.DATA:
            await self._copy_up_anonymous(node)
        await self.upper.truncate(node, size, self._pinned.get(node.ino))

    async def _copy_up_for_writing(self, node: Node) -> None:
        if node.names:
            await self.upper.copy_up_data(node)
        elif node.copy is not Copy.DATA:
            await self._copy_up_anonymous(node)

    async def _copy_up_anonymous(self, node: Node) -> None:
        """Copy the lower bytes of unlinked ``node`` into a file with no name, pinned.

        Concurrent callers wait for the first (the node's lock, as ``copy_up_data``).
        """
        async with node.lock:
            if node.copy is Copy.DATA:
                return
            fd = _anonymous_file(self.upper.work)
            try:
                data = node.lower_data
                if data is not None:
                    reader = self.upper.reader
                    await trio.to_thread.run_sync(
                        copy_lower_into, reader, data, fd, limiter=self.upper.limiter
                    )
            except BaseException:
                os.close(fd)
                raise
            self._pinned[node.ino] = fd
            node.copy = Copy.DATA

    def _pin_readers(self, node: Node | None) -> None:
        """Keep an fd on copied-up ``node`` before its last name goes, for whoever has it open."""
        if (
            node is None
            or node.copy is not Copy.DATA
            or not stat.S_ISREG(node.mode)
            or len(node.names) > 1
            or node.ino in self._pinned
            or self._lookups.get(node.ino) <= 0  # no forget would ever let go of it
        ):
            return
        self._pinned[node.ino] = self.upper.open_file(node, os.O_RDWR)


def _same(listing: Listing, children: dict[bytes, InodeNo]) -> bool:
    """Whether ``listing`` has exactly the entries of ``children``."""
    return len(listing) == len(children) and all(children.get(n) == i for n, i in listing)


def _anonymous_file(directory: os.PathLike[str]) -> int:
    """A read-write fd on a new file in ``directory`` that has no name there."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
            raise
    # A filesystem without O_TMPFILE: a name, gone before anyone could use it.
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    return fd
