"""The copy-on-write view's names and attributes: every FUSE handler but those of open files.

``WritableNames`` maps the requests that look names up, make, link,
remove and rename them, and read or change attributes and xattrs, onto
``lazyfs.fs.upper.Upper``, whose rules and on-disk format it follows.
Both paths serve them alike and add the open files: ``lazyfs.fs.writable``
with a handle per open, ``lazyfs.fs.writable_no_open`` without.  Which fd
a truncate goes through (``_truncate``) and what open files keep before a
file's last name goes (``_pin_readers``) are theirs to say.  Semantics
chosen:

- a metadata change (chmod, chown, utimens, xattrs) copies no data
  (``Upper.copy_up_meta``); a truncate does;
- the kernel may cache entries and attributes only briefly (``TIMEOUT``):
  they change now;
- there is no ``flush``: writes go straight to the upper file, so pyfuse3's
  ENOSYS tells the kernel to stop asking, one request fewer per close;
- the kernel's lookup count of every inode is kept (``_lookups``, a
  ``lazyfs.fs.writable_lookups.LookupCounts``: each entry answered counts
  one, a forget takes its count off).  An inode the kernel forgets is let
  go of (``Upper.forget``) when no name reaches it either, so memory stays
  bounded however many files come and go;
- requests that only read (lookup, getattr, readlink, xattrs, readdir,
  reads) answer from ``Upper.view``, which makes no node for a lower inode
  nothing changed: a walk of the whole image keeps a 4-byte count per
  inode and nothing else.

Every handler ends in ``pyfuse3.FUSEError`` (``lazyfs.fs.boundary``): the
upper's refusals with their errno, anything unexpected as EIO after
logging its cause once.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator, Sequence

import pyfuse3

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs.boundary import fuse_errors
from lazyfs.fs.read_only import NAME_MAX, entry_attributes, no_entry
from lazyfs.fs.upper import Node, Upper
from lazyfs.fs.writable_lookups import LookupCounts
from lazyfs.tree.merge import Inode, InodeNo

TIMEOUT = 1.0

# A directory's entries but ``.`` and ``..``, as (name, inode), in the tree's order:
# by name as ``os.fsdecode`` has it (``lazyfs.tree.packed``), so a reader can go on
# after the last name it was given in any listing of the directory (``listing_order``).
Listing = list[tuple[bytes, InodeNo]]


def listing_order(entry: tuple[bytes, InodeNo]) -> str:
    """The key a ``Listing`` is sorted by (the tree's listings are, too)."""
    return os.fsdecode(entry[0])


class WritableNames(pyfuse3.Operations):
    """The names and attributes of the copy-on-write view of ``upper``.

    ``chunks`` reads lower bytes for the open files the subclasses add.
    """

    def __init__(self, upper: Upper, chunks: ChunkCache) -> None:
        super().__init__()
        self.upper = upper
        self.tree = upper.tree  # what the mount process reports at start
        self.chunks = chunks
        self._lookups = LookupCounts(upper.tree.max_ino())

    def nodes_held(self) -> int:
        """How many nodes the upper holds in memory (the debug log shows it)."""
        return self.upper.held()

    def _counted(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """``entry``, counted as one lookup of its inode by the kernel."""
        if entry.st_ino:
            self._lookups.add(entry.st_ino)
        return entry

    def attributes(self, node: Node | Inode) -> pyfuse3.EntryAttributes:
        """The entry of ``node``, or of a lower inode as the tree has it (no node of it kept)."""
        if isinstance(node, Inode):
            return entry_attributes(
                node.ino,
                node.mode,
                node.nlink,  # as many as its names: what its node would count
                node.uid,
                node.gid,
                node.size,
                (node.mtime_ns,) * 3,  # as its node would start: every time the mtime
                rdev=node.rdev,
                timeout=TIMEOUT,
            )
        return entry_attributes(
            node.ino,
            node.mode,
            node.nlink,
            node.uid,
            node.gid,
            node.size,
            (node.atime_ns, node.mtime_ns, node.ctime_ns),
            rdev=node.rdev,
            timeout=TIMEOUT,
        )

    def listed(
        self, directory: Node | Inode, listing: Listing | None, start: int
    ) -> Iterator[tuple[int, pyfuse3.FileNameT, pyfuse3.EntryAttributes]]:
        """The entries of a listing from position ``start`` on: position, name, attributes.

        Positions 0 and 1 are ``.`` and ``..`` as they are now, then
        ``listing``'s entries (a snapshot, ``snapshot``), or with None the
        tree's own listing of ``directory``, which never changes, read from
        ``start`` on as the read-only mount reads it.  A name is answered as
        it is now, once the directory changed (a snapshot's, or the tree's
        of a directory changed since its listing began): left out once gone
        (or its inode forgotten), the inode it names now if another.  A readdirplus entry makes the
        kernel keep a dentry of its name for ``TIMEOUT``: one for a name gone
        would let a stat find it and an open write into what it named.
        """
        dots = [(b".", directory.ino), (b"..", self.upper.dir_parent(directory))]
        rest = max(start - len(dots), 0)
        entries: Iterator[tuple[bytes, InodeNo | None]]
        if listing is None and self.upper.kept(directory.ino) is None:
            entries = self.upper.tree.entries(directory.ino, rest)
        elif listing is None:  # changed since its listing began: its names as they are now
            names = (n for n, _ in self.upper.tree.entries(directory.ino, rest))
            entries = self._now_in(directory.ino, names)
        else:
            entries = self._now_in(
                directory.ino, (listing[at][0] for at in range(rest, len(listing)))
            )
        for position, (name, child) in enumerate(itertools.chain(dots[start:], entries), start):
            entry = None if child is None else self._entry_of(child)
            if entry is not None:
                yield position, pyfuse3.FileNameT(name), entry

    def _now_in(
        self, ino: InodeNo, names: Iterator[bytes]
    ) -> Iterator[tuple[bytes, InodeNo | None]]:
        """Each of ``names`` and the inode it names in directory ``ino`` now (None: gone)."""
        node = self.upper.kept(ino)
        children = (node.children or {}) if node is not None else None
        for name in names:
            # No node: the directory is as the tree has it again (``Upper.forget``).
            yield (
                name,
                self.upper.tree.lookup(ino, name) if children is None else children.get(name),
            )

    def _entry_of(self, ino: int) -> pyfuse3.EntryAttributes | None:
        """``attributes(upper.peek(ino))``, None where that is None.

        A tree inode without a node is answered from its record alone
        (``LowerTree.stat``): a readdir answers every entry of a directory,
        and making each one's ``Inode`` was most of its cost.
        """
        node = self.upper.kept(ino)
        if node is not None:
            return self.attributes(node)
        found = self.upper.tree.stat(ino)
        if found is None:
            return None
        mode, nlink, uid, gid, size, mtime_ns, rdev = found
        return entry_attributes(
            ino, mode, nlink, uid, gid, size, (mtime_ns,) * 3, rdev=rdev, timeout=TIMEOUT
        )

    def snapshot(self, directory: Node | Inode) -> Listing | None:
        """What a listing of ``directory`` from its start reads: None for the tree's own.

        A directory with a node may change while it is read, so its entries
        are copied; one without is as the tree has it.
        """
        if not isinstance(directory, Node):
            return None
        listing = self.upper.listing(directory.ino)
        listing.sort(key=listing_order)  # sorted as bytes: the same unless a name is not UTF-8
        return listing

    # -- names and attributes ---------------------------------------------------------------

    @fuse_errors
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            return self._counted(self.attributes(self.upper.view_directory(parent_inode)))
        found = self.upper.view_child(parent_inode, name)
        return no_entry(TIMEOUT) if found is None else self._counted(self.attributes(found))

    @fuse_errors
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self.attributes(self.upper.view(inode))

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """Take the kernel's lookups off; let go of what it no longer knows.

        Never yields: no other request runs between a count reaching zero
        and what is let go of.
        """
        for inode, count in inode_list:
            if self._lookups.take(inode, count) == 0:
                self._forgotten(InodeNo(inode))

    def _forgotten(self, ino: InodeNo) -> None:
        """The kernel knows ``ino`` no more: what it kept, and its node if unlinked, may go.

        The kernel forgets an inode only once no file of it is open.
        """
        self.upper.forget(ino)

    @fuse_errors
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        found = self.upper.view(inode)
        if not stat.S_ISLNK(found.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return pyfuse3.FileNameT(found.target)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        # Free space is what the upper directory has: that is where writes go.
        found = os.statvfs(self.upper.upper)
        stats = pyfuse3.StatvfsData()
        stats.f_bsize, stats.f_frsize = found.f_bsize, found.f_frsize
        stats.f_blocks, stats.f_bfree, stats.f_bavail = (
            found.f_blocks,
            found.f_bfree,
            found.f_bavail,
        )
        stats.f_files, stats.f_ffree, stats.f_favail = (
            found.f_files,
            found.f_ffree,
            found.f_favail,
        )
        stats.f_namemax = NAME_MAX
        return stats

    @fuse_errors
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        value = dict(self.upper.view(inode).xattrs).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @fuse_errors
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        return [pyfuse3.XAttrNameT(key) for key in dict(self.upper.view(inode).xattrs)]

    @fuse_errors
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.upper.node(inode)
        if fields.update_size:
            await self._truncate(node, attr.st_size, fh)
        if fields.update_mode:
            self.upper.set_mode(node, attr.st_mode)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else node.uid
            gid = attr.st_gid if fields.update_gid else node.gid
            self.upper.set_owner(node, uid, gid)
        if fields.update_atime or fields.update_mtime:
            self.upper.set_times(
                node,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return self.attributes(node)

    async def _truncate(self, node: Node, size: int, fh: int | None) -> None:
        """Set ``node``'s size for setattr, through whatever fd ``fh`` (or the path) has."""
        raise NotImplementedError

    @fuse_errors
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFDIR | (stat.S_IMODE(mode) & ~ctx.umask)
        node = self.upper.new(parent_inode, name, mode, ctx.uid, ctx.gid)
        return self._counted(self.attributes(node))

    @fuse_errors
    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~ctx.umask)
        node = self.upper.new(parent_inode, name, mode, ctx.uid, ctx.gid, rdev=rdev)
        return self._counted(self.attributes(node))

    @fuse_errors
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.upper.new(
            parent_inode, name, stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, target=target
        )
        return self._counted(self.attributes(node))

    @fuse_errors
    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = await self.upper.link(inode, new_parent_inode, new_name)
        return self._counted(self.attributes(node))

    @fuse_errors
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._pin_readers(self.upper.lookup(parent_inode, name))
        self.upper.remove(parent_inode, name, directory=False)

    @fuse_errors
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self.upper.remove(parent_inode, name, directory=True)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if not flags:
            # Only a plain rename takes a name away: an exchange keeps both, and a
            # RENAME_NOREPLACE onto a name fails. A pin is let go of when the kernel
            # forgets the inode, which one it keeps the name of may never do.
            self._pin_readers(self.upper.lookup(parent_inode_new, name_new))
        await self.upper.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    def _pin_readers(self, node: Node | None) -> None:
        """Before a name of ``node`` may go: keep what its open files need to go on reading."""
        raise NotImplementedError

    @fuse_errors
    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.upper.set_xattr(self.upper.node(inode), name, value)

    @fuse_errors
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self.upper.set_xattr(self.upper.node(inode), name, None)

    @fuse_errors
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        """Directory changes are made with plain syscalls; the upper filesystem orders them."""
