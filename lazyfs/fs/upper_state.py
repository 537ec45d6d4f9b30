"""The state under ``lazyfs.fs.upper.Upper``: nodes over the merged tree, copy-up and metadata.

``UpperState`` keeps the nodes of the writable view (``Node``) over the
immutable ``MergedTree``, finds where each lives in the upper directory,
copies nodes up (directories, metadata-only, data) and applies metadata
changes; ``lazyfs.fs.upper`` adds the operations on names and states the
on-disk format and the contracts both follow.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import trio

from lazyfs.blobs.ranges import TarRangeReader
from lazyfs.store.atomic import Staged, staged_file
from lazyfs.tree.merge import ROOT_INO, DataRef, Inode, InodeNo, MergedTree
from providers.extents import data_extents

OPAQUE_XATTR = "trusted.overlay.opaque"
METACOPY_XATTR = "trusted.overlay.metacopy"
COPY_BLOCK = 1 << 20


class Copy(Enum):
    """How much of an inode is in the upper directory."""

    NONE = 0  # only in lower layers
    META = 1  # attributes in upper (a metacopy file), bytes still in the lower layer
    DATA = 2  # wholly in upper


@dataclass(eq=False, slots=True)
class Node:
    """One inode of the writable view; ``names[0]`` is where it lives in upper."""

    ino: InodeNo
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    lower: Inode | None = None
    names: list[tuple[InodeNo, bytes]] = field(default_factory=list)
    copy: Copy = Copy.NONE
    opaque: bool = False
    children: dict[bytes, InodeNo] | None = None
    subdirs: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def nlink(self) -> int:
        if stat.S_ISDIR(self.mode):
            return 2 + self.subdirs
        return len(self.names)

    @property
    def lower_data(self) -> DataRef | None:
        """Where the bytes are while they are not copied up."""
        return self.lower.data if self.lower is not None and self.copy is not Copy.DATA else None


class UpperError(Exception):
    """An expected refusal of the writable view, with its facts.

    ``errno`` is what the FUSE request is answered (``lazyfs.fs.boundary``
    turns it into ``FUSEError`` at the handler), ``what`` says which name or
    inode and why, for the debug log.
    """

    def __init__(self, number: int, what: str) -> None:
        super().__init__(number, what)
        self.errno = number
        self.what = what

    def __str__(self) -> str:
        return f"{errno.errorcode.get(self.errno, self.errno)}: {self.what}"


class UpperState:
    """The merged tree ``tree`` with the changes kept in ``upper`` (``work`` for temporaries).

    ``upper`` and ``work`` must be empty directories on one filesystem.
    """

    def __init__(self, tree: MergedTree, upper: Path, work: Path, reader: TarRangeReader) -> None:
        if any(upper.iterdir()):
            raise ValueError(f"upper directory {upper} is not empty; reusing one is not supported")
        self.tree = tree
        self.upper = upper
        self.work = work
        self.reader = reader
        self.limiter = trio.CapacityLimiter(4)
        self._nodes: dict[InodeNo, Node] = {}
        self._numbers = itertools.count(max(tree.inodes) + 1)
        self._temps = itertools.count()
        self._lower_names: dict[InodeNo, list[tuple[InodeNo, bytes]]] = {}
        for parent, listing in tree.children.items():
            for name, child in listing:
                self._lower_names.setdefault(child, []).append((parent, name))
        root = self.node(ROOT_INO)
        root.copy = Copy.DATA
        self._set_disk_attributes(root, upper)

    # -- reading ----------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        """The node of ``ino``; ENOENT for a number never given out."""
        found = self._nodes.get(InodeNo(ino))
        if found is not None:
            return found
        inode = self.tree.inodes.get(InodeNo(ino))
        if inode is None:
            raise UpperError(errno.ENOENT, f"no inode {ino}")
        found = Node(
            ino=inode.ino,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size,
            atime_ns=inode.mtime_ns,
            mtime_ns=inode.mtime_ns,
            ctime_ns=inode.mtime_ns,
            rdev=inode.rdev,
            target=inode.target,
            xattrs=dict(inode.xattrs),
            lower=inode,
            names=list(self._lower_names.get(inode.ino, [])),
        )
        if stat.S_ISDIR(inode.mode):
            found.children = dict(self.tree.children.get(inode.ino, ()))
            found.subdirs = inode.nlink - 2
        self._nodes[inode.ino] = found
        return found

    def directory(self, ino: int) -> Node:
        found = self.node(ino)
        if found.children is None:
            raise UpperError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return found

    def lookup(self, parent: int, name: bytes) -> Node | None:
        child = self.directory(parent).children.get(name)  # type: ignore[union-attr]
        return None if child is None else self.node(child)

    def listing(self, parent: int) -> list[tuple[bytes, InodeNo]]:
        children = self.directory(parent).children
        assert children is not None
        return sorted(children.items())

    def path(self, node: Node, which: int = 0) -> Path:
        """Where name ``which`` of ``node`` is (or would be) in upper.

        Walked up parent by parent, not recursively: a container may nest
        directories deeper than Python's recursion limit.  A path past
        PATH_MAX is the kernel's to refuse (ENAMETOOLONG, passed on).
        """
        names: list[bytes] = []
        while node.ino != ROOT_INO:
            if not node.names:
                # Unlinked: it has no place in upper any more.
                raise UpperError(errno.ENOENT, f"inode {node.ino} has no name left")
            parent, name = node.names[which]
            names.append(name)
            node, which = self.node(parent), 0
        if not names:
            return self.upper
        names.reverse()
        return self.upper / os.fsdecode(b"/".join(names))

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer has ``name`` in ``parent`` (then a whiteout must hide it)."""
        if parent.lower is None or parent.opaque:
            return False
        return self.tree.lookup(parent.lower.ino, name) is not None

    # -- copy-up ----------------------------------------------------------------------

    def copy_up_dir(self, node: Node) -> Path:
        """Make directory ``node`` (and its parents) exist in upper; its path there."""
        missing: list[Node] = []  # from node up to the first one already in upper
        here = node
        while here.copy is Copy.NONE:
            if not here.names:
                # Removed while a process still had it open.
                raise UpperError(errno.ENOENT, f"directory {here.ino} has no name left")
            missing.append(here)
            here = self.node(here.names[0][0])
        path = self.path(here)
        for below in reversed(missing):
            path = path / os.fsdecode(below.names[0][1])
            path.mkdir(mode=0o700)
            self._set_disk_attributes(below, path)
            below.copy = Copy.DATA
        return path

    def copy_up_meta(self, node: Node) -> None:
        """Put ``node`` in upper without its bytes (a metacopy for a non-empty lower file)."""
        if node.copy is not Copy.NONE:
            return
        if node.children is not None:
            self.copy_up_dir(node)
            return
        for which, (parent, _) in enumerate(node.names):
            self.copy_up_dir(self.node(parent))
            path = self.path(node, which)
            if which:
                os.link(self.path(node), path)
                continue
            kind = stat.S_IFMT(node.mode)
            if kind == stat.S_IFREG:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.ftruncate(fd, node.size)  # sparse: no block written
                finally:
                    os.close(fd)
                if node.size:
                    os.setxattr(path, METACOPY_XATTR, b"")
            elif kind == stat.S_IFLNK:
                os.symlink(node.target, path)
            else:
                os.mknod(path, node.mode, node.rdev)
            self._set_disk_attributes(node, path)
        node.copy = Copy.META if stat.S_ISREG(node.mode) and node.size else Copy.DATA

    async def copy_up_data(self, node: Node) -> None:
        """Put ``node``'s bytes in upper, once: a temporary file renamed over the metacopy.

        Concurrent callers wait for the first; a cancelled copy leaves the
        metacopy as it was (the temporary file is removed).
        """
        async with node.lock:
            self.copy_up_meta(node)
            if node.copy is Copy.DATA:
                return
            data = node.lower_data
            assert data is not None  # META only for non-empty lower files
            # Modes and the rest are set below, as the node has them once the bytes are in.
            with staged_file(self.work, mode=None, prefix=f"copyup-{node.ino}-") as staged:
                await trio.to_thread.run_sync(self._copy_bytes, data, staged, limiter=self.limiter)
                self._set_disk_attributes(node, staged.path)
                # The upper directory is not kept across a crash: no directory sync.
                staged.commit(self.path(node), sync_dir=False)
            for which in range(1, len(node.names)):
                self._replace_with_link(self.path(node), self.path(node, which))
            node.copy = Copy.DATA

    async def truncate(self, node: Node, size: int, fd: int | None = None) -> None:
        """Set regular file ``node``'s size (through ``fd`` when given: it may be unlinked).

        Truncating to zero copies no data: the metacopy just loses its marker.
        """
        if not stat.S_ISREG(node.mode):
            raise UpperError(errno.EINVAL, f"inode {node.ino} is not a regular file")
        if size == 0:
            async with node.lock:  # not while a data copy-up of it runs
                self.copy_up_meta(node)
                if node.copy is Copy.META:
                    path = self.path(node)
                    os.truncate(path, 0)
                    os.removexattr(path, METACOPY_XATTR)
                    node.copy = Copy.DATA
        else:
            await self.copy_up_data(node)
        if fd is not None:
            os.ftruncate(fd, size)
        else:
            os.truncate(self.path(node), size)
        node.size = size
        self.touch(node)

    def _copy_bytes(self, data: DataRef, staged: Staged) -> None:
        # Runs in a worker thread: blocking reads, writes and the fsync, no trio.
        copy_lower_into(self.reader, data, staged.file.fileno())
        staged.sync()

    def _replace_with_link(self, source: Path, dest: Path) -> None:
        temp = self.work / f"link-{next(self._temps)}"
        os.link(source, temp)
        os.rename(temp, dest)

    def _set_disk_attributes(self, node: Node, path: Path) -> None:
        os.chown(path, node.uid, node.gid, follow_symlinks=False)
        if not stat.S_ISLNK(node.mode):
            os.chmod(path, stat.S_IMODE(node.mode))
        os.utime(path, ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
        for key, value in node.xattrs.items():
            os.setxattr(path, key, value, follow_symlinks=False)
        if node.opaque:
            os.setxattr(path, OPAQUE_XATTR, b"y", follow_symlinks=False)

    # -- metadata -----------------------------------------------------------------------

    def touch(self, node: Node, *, data: bool = True) -> None:
        now = time.time_ns()
        node.ctime_ns = now
        if data:
            node.mtime_ns = now

    def set_mode(self, node: Node, mode: int) -> None:
        self.copy_up_meta(node)
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if not stat.S_ISLNK(node.mode):
            os.chmod(self.path(node), stat.S_IMODE(mode))  # hardlinks share the upper inode
        self.touch(node, data=False)

    def set_owner(self, node: Node, uid: int, gid: int) -> None:
        self.copy_up_meta(node)
        os.chown(self.path(node), uid, gid, follow_symlinks=False)
        node.uid, node.gid = uid, gid
        if not stat.S_ISLNK(node.mode):
            # chown(2) may drop setuid and setgid on disk: keep memory as the disk has it.
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(os.stat(self.path(node)).st_mode)
        self.touch(node, data=False)

    def set_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> None:
        self.copy_up_meta(node)
        node.atime_ns = node.atime_ns if atime_ns is None else atime_ns
        node.mtime_ns = node.mtime_ns if mtime_ns is None else mtime_ns
        os.utime(self.path(node), ns=(node.atime_ns, node.mtime_ns), follow_symlinks=False)
        node.ctime_ns = time.time_ns()

    def set_xattr(self, node: Node, name: bytes, value: bytes | None) -> None:
        """Set ``name`` (or remove it, with None: ENODATA when it is not there)."""
        if name.startswith(b"trusted.overlay."):
            # Ours: the upper format's markers.
            raise UpperError(errno.EPERM, f"{name!r} is reserved for the upper directory's format")
        if value is None and name not in node.xattrs:
            raise UpperError(errno.ENODATA, f"inode {node.ino} has no xattr {name!r}")
        self.copy_up_meta(node)
        if value is None:
            os.removexattr(self.path(node), name, follow_symlinks=False)
            del node.xattrs[name]
        else:
            os.setxattr(self.path(node), name, value, follow_symlinks=False)
            node.xattrs[name] = value
        self.touch(node, data=False)


def copy_lower_into(reader: TarRangeReader, data: DataRef, fd: int) -> None:
    """Write the lower file ``data`` into ``fd`` from offset 0: its extents, holes left as holes.

    Blocking (a worker thread's job).  Raises OSError(EIO) if the layer ends early.
    """
    for start, length, stored in data_extents(data.extents, data.size):
        done = 0
        while done < length:
            where = data.offset + stored + done
            chunk = reader.read_range(data.digest, where, min(COPY_BLOCK, length - done))
            if not chunk:
                raise OSError(errno.EIO, f"layer {data.digest} ended early at {where}")
            os.pwrite(fd, chunk, start + done)
            done += len(chunk)
    os.ftruncate(fd, data.size)
