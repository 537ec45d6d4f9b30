"""The state under ``lazyfs.fs.upper.Upper``: the nodes over the merged tree, and where they are.

``UpperState`` keeps the nodes of the writable view (``Node``) over the
immutable lower tree (a ``lazyfs.tree.lower.LowerTree``: in a mount, the
image's packed tree, mapped and shared with every other mount of the
image) and finds where each lives in the upper
directory; ``lazyfs.fs.upper_copy`` adds copy-up and metadata changes,
``lazyfs.fs.upper`` the operations on names, and states the on-disk
format and the contracts all three follow.  Every file of the upper is
reached through an fd of its directory (``at``, ``UpperCopy.inside``; see
``lazyfs.fs.upper_disk``), never by an absolute path.

A node is made for an inode when something is to change it (``node``,
``directory``, ``lookup``: the operations that change names, attributes
and data go through them), and lives in memory while anything can reach
it: a name, or the kernel's lookups of it.  Reads make none: ``view``,
``view_child`` and ``view_directory`` answer with the node when one is
kept, else with the tree's own ``Inode``, since a lower inode that has no
node is exactly as the tree has it.  So a ``find`` or a read-all over the
whole image keeps nothing per inode here, as on a read-only mount.
``forget`` lets go of a node the kernel no longer knows once it has no
name left, so a container that creates and deletes files forever does not
grow the mount.  The node of a lower inode goes too once it is as the tree
has it (nothing of it, its names or its children changed, no copy in
upper): the tree makes the same node again when it is asked for, so a
writable mount holds only what changed and what the kernel holds of it.
Nothing is made for a lower inode nothing asked to change: its names come
from the tree when its node is made (``names_of``), not from a map of the
whole tree.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import trio

from lazyfs.blobs.ranges import TarRangeReader
from lazyfs.fs.upper_disk import DIR_FLAGS, opened_dir, set_xattr_at
from lazyfs.tree.lower import LowerTree, as_lower
from lazyfs.tree.merge import ROOT_INO, DataRef, Inode, InodeNo, MergedTree

OPAQUE_XATTR = "trusted.overlay.opaque"
METACOPY_XATTR = "trusted.overlay.metacopy"
REDIRECT_XATTR = "trusted.overlay.redirect"
NAME_MAX = 255
# The tree's inodes read most recently, kept so that the requests a file
# gets in a row (lookup, getattr, reads) decode it once: a bound, not a
# copy of the tree (a few hundred bytes each).
INODES_KEPT = 1024


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
    def unlinked(self) -> bool:
        """No name left (the root has none, and is upper's own): unlinked while still open."""
        return not self.names and self.ino != ROOT_INO

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

    ``upper`` and ``work`` are directories on one filesystem.  This sets up
    no node: ``UpperCopy`` starts a fresh upper (``set_up_root``) or loads
    one a mount left (``lazyfs.fs.upper_load``).
    """

    def __init__(
        self, tree: MergedTree | LowerTree, upper: Path, work: Path, reader: TarRangeReader
    ) -> None:
        self.tree = as_lower(tree)
        self.upper = upper
        self.work = work
        self.reader = reader
        self.limiter = trio.CapacityLimiter(4)
        # Every file of the upper is reached from here (lazyfs.fs.upper_disk).
        self._root = os.open(upper, DIR_FLAGS)
        self._nodes: dict[InodeNo, Node] = {}
        self._inodes: dict[int, Inode] = {}  # INODES_KEPT of the tree's, read recently
        self._numbers = itertools.count(self.tree.max_ino() + 1)
        self._temps = itertools.count()

    def set_up_root(self) -> None:
        """Start a fresh upper: its root takes the attributes of the lower root."""
        root = self.node(ROOT_INO)
        root.copy = Copy.DATA
        self._set_disk_attributes(root, self._root, ".")

    # -- reading ----------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        """The node of ``ino``; ENOENT for a number never given out, or forgotten."""
        found = self._nodes.get(InodeNo(ino))
        if found is not None:
            return found
        inode = self.tree.inode(ino)
        if inode is None:
            raise UpperError(errno.ENOENT, f"no inode {ino}")
        found = lower_node(self.tree, inode, list(self.tree.names_of(inode.ino)))
        self._nodes[inode.ino] = found
        return found

    def find(self, ino: int) -> Node | None:
        """The node of ``ino``, or None when there is none (any more)."""
        try:
            return self.node(ino)
        except UpperError:
            return None

    # -- reading without making nodes ---------------------------------------------------

    def kept(self, ino: int) -> Node | None:
        """The node of ``ino`` if one is in memory; None when the tree's inode is all there is."""
        return self._nodes.get(InodeNo(ino))

    def peek(self, ino: int) -> Node | Inode | None:
        """``ino`` as it is now, making no node: its node if kept, else the tree's inode.

        A lower inode without a node is as the tree has it (the module
        docstring says why), so its ``Inode`` answers a read as its node
        would.  None for a number never given out, or forgotten.
        """
        found = self._nodes.get(InodeNo(ino))
        if found is not None:
            return found
        inode = self._inodes.get(ino)
        if inode is None:
            inode = self.tree.inode(ino)
            if inode is None:
                return None
            if len(self._inodes) >= INODES_KEPT:
                # Dropped whole, not one by one: cheaper than an LRU, and as bounded.
                self._inodes.clear()
            self._inodes[ino] = inode
        return inode

    def view(self, ino: int) -> Node | Inode:
        """``peek``, with ENOENT for a number never given out, or forgotten."""
        found = self.peek(ino)
        if found is None:
            raise UpperError(errno.ENOENT, f"no inode {ino}")
        return found

    def view_directory(self, ino: int) -> Node | Inode:
        """``view`` of a directory; ENOTDIR for anything else."""
        found = self.view(ino)
        if not is_directory(found):
            raise UpperError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return found

    def view_child(self, parent: int, name: bytes) -> Node | Inode | None:
        """``lookup`` making no node: what ``name`` in ``parent`` is, None if nothing."""
        check_name(name)
        directory = self._nodes.get(InodeNo(parent))
        if directory is not None:
            if directory.children is None:
                raise UpperError(errno.ENOTDIR, f"inode {parent} is not a directory")
            child = directory.children.get(name)
        else:
            # Found, it is a directory; not found, what it is says ENOENT or ENOTDIR.
            child = self.tree.lookup(InodeNo(parent), name)
            if child is None:
                self.view_directory(parent)
        return None if child is None else self.view(child)

    def dir_parent(self, directory: Node | Inode) -> InodeNo:
        """The parent ``..`` names; the root, and a directory removed, have only themselves."""
        if isinstance(directory, Node):
            return directory.names[0][0] if directory.names else directory.ino
        return self.tree.parent(directory.ino)

    def forget(self, ino: int) -> None:
        """The kernel no longer knows ``ino``: drop its node if no name reaches it either,
        or if it is a lower inode's node as the tree would make it again."""
        node = self._nodes.get(InodeNo(ino))
        if node is None or node.ino == ROOT_INO or node.lock.locked():
            return
        if (not node.names and node.lower is None) or self._pristine(node):
            del self._nodes[node.ino]

    def _pristine(self, node: Node) -> bool:
        """Whether ``node`` is a lower inode's, unchanged: ``node(ino)`` would make it again."""
        if node.lower is None or node.copy is not Copy.NONE or node.opaque:
            return False
        again = lower_node(self.tree, node.lower, list(self.tree.names_of(node.lower.ino)))
        return _state(node) == _state(again)

    def held(self) -> int:
        """How many nodes are in memory (for the debug log and tests)."""
        return len(self._nodes)

    def directory(self, ino: int) -> Node:
        found = self.node(ino)
        if found.children is None:
            raise UpperError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return found

    def lookup(self, parent: int, name: bytes) -> Node | None:
        """The node at ``name`` in ``parent``; ENAMETOOLONG past NAME_MAX, as overlayfs."""
        check_name(name)
        child = self.directory(parent).children.get(name)  # type: ignore[union-attr]
        return None if child is None else self.node(child)

    def listing(self, parent: int) -> list[tuple[bytes, InodeNo]]:
        children = self.directory(parent).children
        assert children is not None
        return sorted(children.items())

    def _names(self, node: Node) -> list[bytes]:
        """The names from the upper's root down to ``node`` (by its first names).

        Walked up parent by parent, not recursively: a container may nest
        directories deeper than Python's recursion limit.
        """
        names: list[bytes] = []
        while node.ino != ROOT_INO:
            if not node.names:
                # Unlinked: it has no place in upper any more.
                raise UpperError(errno.ENOENT, f"inode {node.ino} has no name left")
            parent, name = node.names[0]
            names.append(name)
            node = self.node(parent)
        names.reverse()
        return names

    @contextmanager
    def at(self, node: Node, which: int = 0) -> Iterator[tuple[int, str]]:
        """An fd of the upper directory holding name ``which`` of ``node``, and that name.

        The root is ``"."`` in its own fd.  The directory must be in upper.
        """
        if node.ino == ROOT_INO:
            with opened_dir(self._root, []) as fd:
                yield fd, "."
            return
        if not node.names:
            raise UpperError(errno.ENOENT, f"inode {node.ino} has no name left")
        parent, name = node.names[which]
        with opened_dir(self._root, self._names(self.node(parent))) as fd:
            yield fd, os.fsdecode(name)

    def open_file(self, node: Node, flags: int) -> int:
        """A new fd of ``node``'s upper file, opened with ``flags``."""
        with self.at(node) as (fd, name):
            return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether a lower layer has ``name`` in ``parent`` (then a whiteout must hide it)."""
        if parent.lower is None or parent.opaque:
            return False
        return self.tree.lookup(parent.lower.ino, name) is not None

    def lower_path(self, node: Node) -> bytes:
        """Where ``node``'s lower inode is in the lower layers: ``/a/b``, as a redirect names it."""
        assert node.lower is not None
        names: list[bytes] = []
        ino = node.lower.ino
        while ino != ROOT_INO:
            parent, name = self.tree.names_of(ino)[0]
            names.append(name)
            ino = parent
        return b"/" + b"/".join(reversed(names))

    def _set_disk_attributes(self, node: Node, dir_fd: int, name: str) -> None:
        os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISLNK(node.mode):
            os.chmod(name, stat.S_IMODE(node.mode), dir_fd=dir_fd)
        os.utime(name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        for key, value in node.xattrs.items():
            set_xattr_at(dir_fd, name, key, value)
        if node.opaque:
            set_xattr_at(dir_fd, name, OPAQUE_XATTR, b"y")


def is_directory(found: Node | Inode) -> bool:
    """Whether a node, or a tree's inode, is a directory."""
    if isinstance(found, Node):
        return found.children is not None
    return stat.S_ISDIR(found.mode)


def lower_node(tree: LowerTree, inode: Inode, names: list[tuple[InodeNo, bytes]]) -> Node:
    """The node of ``tree``'s inode ``inode``, shown at ``names``, as the tree has it."""
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
        names=names,
    )
    if stat.S_ISDIR(inode.mode):
        found.children = dict(tree.entries(inode.ino))
        found.subdirs = inode.nlink - 2
    return found


def _state(node: Node) -> tuple[object, ...]:
    """Everything of a node but its lock (and ``lower``, which is the same by its number)."""
    return (
        *(node.ino, node.mode, node.uid, node.gid, node.size, node.rdev, node.target),
        *(node.atime_ns, node.mtime_ns, node.ctime_ns, node.xattrs, node.names),
        *(node.copy, node.opaque, node.children, node.subdirs),
    )


def check_name(name: bytes) -> None:
    """ENAMETOOLONG for a name past NAME_MAX, which no upper filesystem could hold."""
    if len(name) > NAME_MAX:
        raise UpperError(errno.ENAMETOOLONG, f"name {name[:32]!r}... is longer than {NAME_MAX}")
