"""The merged tree of an image: the union of its layers' indexes, bottom first.

``merge(indexes)`` replays every layer's index on an in-memory tree the way
``backends.apply`` replays a layer's tar on a directory, with the rules of
``providers.layer_rules``, so the FUSE view equals what the other backends
and ``umoci unpack`` make:

- entries are replayed in archive order; a layer's whiteout and opaque
  markers hide what *lower* layers made, never what the layer itself makes,
  whatever their order in the archive, and find their directory as the tree
  stands when they come (through a symlink the layer made before them, say);
- a directory over a directory keeps its children and takes the new mode,
  owner, mtime and xattrs (the old xattrs go); anything else replaces;
- parents that are symlinks are followed inside the tree (absolute targets
  from its root, ``..`` above the root refused); the last component never is;
  what follows a missing component is resolved lexically, so a ``..``
  climbs back out of it (``layer_rules.past_missing``); missing parents are
  made 0755 root:root, mtime 0;
- a hardlink names a path already in the tree and shares its inode.

The result is immutable.  Inode numbers are given in a depth-first walk of
the tree by sorted name, the root being ``ROOT_INO``, so the same image gets
the same numbers on every mount; a hardlinked inode keeps the number of its
first name.  Regular files carry where their bytes are: the layer digest and
the offset in its uncompressed tar.  Pure: no I/O.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, NewType

from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from providers import layer_rules as rules
from providers.digest import Digest
from providers.errors import BadImage, UnsafeLayer, bad_entry
from providers.extents import Extent
from providers.layer_entry import (
    EntryKind,
    carried_xattr,
    link_into_itself,
    link_to_directory,
    no_link_source,
)
from providers.layer_rules import RelPath

InodeNo = NewType("InodeNo", int)
# os.fsencode, without its checks per call: names here are always str.
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _fsencode(name: str) -> bytes:
    return name.encode(_FS_ENCODING, _FS_ERRORS)


ROOT_INO = InodeNo(1)  # what FUSE calls the root

_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.CHAR: stat.S_IFCHR,
    Kind.BLOCK: stat.S_IFBLK,
    Kind.FIFO: stat.S_IFIFO,
}


# DataRef and Inode are NamedTuples, immutable as frozen dataclasses are: a
# mount makes one of each per file of the image, at a sixth of the cost.
class DataRef(NamedTuple):
    """Where a regular file's bytes are: ``size`` bytes at ``offset`` of layer ``digest``'s tar.

    For a GNU sparse file, ``extents`` are its data extents stored from
    ``offset`` on, and the rest reads as zeros (``providers.extents.pieces``).
    """

    digest: Digest
    offset: int
    size: int
    extents: tuple[Extent, ...] | None = None


class Inode(NamedTuple):
    """One inode of the merged tree; ``mode`` is a full st_mode (type bits included)."""

    ino: InodeNo
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int
    rdev: int = 0
    target: bytes = b""
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    data: DataRef | None = None


@dataclass(frozen=True)
class MergedTree:
    """Inodes by number, each directory's children as (name, ino) sorted by name, and its parent.

    The root is its own parent, as ``/..`` is ``/``.
    """

    inodes: dict[InodeNo, Inode]
    children: dict[InodeNo, tuple[tuple[bytes, InodeNo], ...]]
    parents: dict[InodeNo, InodeNo] = field(repr=False)
    _by_name: dict[tuple[InodeNo, bytes], InodeNo] = field(repr=False)

    def lookup(self, parent: InodeNo, name: bytes) -> InodeNo | None:
        return self._by_name.get((parent, name))


@dataclass(eq=False, slots=True)
class _Node:
    """A node while the tree is built; identity is the inode (hardlinks share it)."""

    kind: Kind
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    target: str = ""
    rdev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    data: DataRef | None = None
    children: dict[str, _Node] | None = None
    ino: int = 0  # given by _freeze, which also counts the node's names
    names: int = 0

    @classmethod
    def directory(cls) -> _Node:
        return cls(Kind.DIR, children={})


def merge(indexes: Sequence[LayerIndex]) -> MergedTree:
    """The union of ``indexes``, bottom layer first.  Raises UnsafeLayer or BadImage."""
    root = _Node.directory()
    for index in indexes:
        _Layer(root, index).apply()
    return _freeze(root)


class _Layer:
    """One layer replayed on the tree in archive order, as ``backends.apply`` replays it.

    ``created`` holds the resolved paths this layer made (entries, and
    directories made for them), ``ancestors`` their strict ancestors: its
    whiteout and opaque markers hide what lower layers made and spare these.
    """

    def __init__(self, root: _Node, index: LayerIndex) -> None:
        self.root = root
        self.index = index
        self.layer = str(index.digest)
        self.created: set[RelPath] = set()
        self.ancestors: set[RelPath] = set()
        # Walks that found their directory through existing nodes only, by
        # path: entries come in archive order, so most share their parent
        # with the one before.  Such a walk gives the same answer until a
        # node is replaced or hidden, so those clear it; adding a node
        # cannot change it.  (A walk past a missing component is not kept:
        # a node made there later, a symlink say, would change it.)
        self.walked: dict[RelPath, tuple[dict[str, _Node], RelPath]] = {}

    def apply(self) -> None:
        for entry in self.index.entries:
            if entry.kind is Kind.WHITEOUT:
                found = self._walk(entry.path[:-1], entry, create=False)
                if found is not None:
                    children, where = found
                    name = entry.path[-1]
                    self._hide(children, name, (*where, name))
            elif entry.kind is Kind.OPAQUE:
                found = self._walk(entry.path, entry, create=False)
                if found is not None:
                    children, where = found
                    for name in list(children):
                        self._hide(children, name, (*where, name))
            else:
                self._write(entry)

    def _hide(self, children: dict[str, _Node], name: str, path: RelPath) -> None:
        """Remove what lower layers made at ``path``, keeping what this layer made.

        Without recursion: this layer's own directories may go deeper than
        Python's stack.
        """
        todo = [(children, name, path)]
        while todo:
            children, name, path = todo.pop()
            node = children.get(name)
            if node is None:
                continue
            if path not in self.created and path not in self.ancestors:
                del children[name]
                self.walked.clear()  # paths through ``name`` lead nowhere now
            elif node.children is not None:
                todo.extend((node.children, child, (*path, child)) for child in node.children)

    def _mark_created(self, path: RelPath) -> None:
        self.created.add(path)
        for end in range(len(path) - 1, -1, -1):
            if path[:end] in self.ancestors:
                break
            self.ancestors.add(path[:end])

    def _write(self, entry: IndexEntry) -> None:
        if not entry.path:
            _set_attributes(self.root, entry)
            return
        found = self._walk(entry.path[:-1], entry, create=True)
        assert found is not None  # walk with create finds, makes or raises
        parent, where = found
        name = entry.path[-1]
        old = parent.get(name)
        if old is not None and (entry.kind is not Kind.DIR or old.kind is not Kind.DIR):
            self.walked.clear()  # ``old`` is replaced: paths through it lead elsewhere now
        if entry.kind is Kind.DIR:
            if old is None or old.kind is not Kind.DIR:
                old = parent[name] = _Node.directory()
            _set_attributes(old, entry)
        elif entry.kind is Kind.HARDLINK:
            parent[name] = self._link_source(entry, (*where, name))
        else:
            node = _Node(entry.kind)
            if entry.kind is Kind.FILE:
                node.data = DataRef(self.index.digest, entry.offset, entry.size, entry.extents)
            _set_attributes(node, entry)
            parent[name] = node
        self._mark_created((*where, name))

    def _link_source(self, entry: IndexEntry, at: RelPath) -> _Node:
        """The node hardlink ``entry`` names, to be put at the resolved path ``at``."""
        path = tuple(entry.target.split("/"))
        found = self._walk(path[:-1], entry, create=False)
        source = found[0].get(path[-1]) if found is not None else None
        if found is None or source is None:
            raise no_link_source(self.layer, _name(entry), entry.target)
        if source.kind is Kind.DIR:
            raise link_to_directory(self.layer, _name(entry), entry.target)
        where = (*found[1], path[-1])
        if where != at and where[: len(at)] == at:
            # Replacing ``at`` removes the source with it, as on disk.
            raise link_into_itself(self.layer, _name(entry), entry.target)
        return source

    def _bad(self, entry: IndexEntry, reason: str) -> BadImage:
        return bad_entry(self.layer, _name(entry), reason)

    def _walk(
        self, path: RelPath, entry: IndexEntry, *, create: bool
    ) -> tuple[dict[str, _Node], RelPath] | None:
        """The children of the directory at ``path`` and where it really is.

        Symlinks on the way are followed; what follows a missing component
        is resolved lexically (``layer_rules.past_missing``).  None when the
        path ends in something missing (and not ``create``) or meets a
        non-directory; with ``create`` the missing directories it ends in
        are made and a non-directory on the way is an error.
        """
        known = self.walked.get(path)
        if known is not None:
            return known
        stack = [self.root]  # the directories walked through, for ".."
        where: list[str] = []  # their names
        todo = list(reversed(path))
        hops = 0
        lexical = False  # whether the walk went past a missing component
        while todo:
            part = todo.pop()
            if part == "..":  # only symlink targets bring these
                if len(stack) == 1:
                    raise UnsafeLayer(self.layer, _name(entry), "goes through a symlink above root")
                stack.pop()
                where.pop()
                continue
            children = stack[-1].children
            assert children is not None  # only directories go on the stack
            child = children.get(part)
            if child is None:
                lexical = True
                ends = rules.past_missing(part, todo).ends
                if ends and not create:
                    return None
                for name in ends:  # the rest of the path: todo is empty
                    child = children[name] = _Node.directory()
                    children = child.children
                    assert children is not None
                    where.append(name)
                    stack.append(child)
                    self._mark_created(tuple(where))
                continue
            if child.kind is Kind.SYMLINK:
                hops += 1
                if hops > rules.MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(self.layer, _name(entry), "goes through too many symlinks")
                absolute, more = rules.split_link_target(child.target)
                if absolute:
                    del stack[1:]
                    where.clear()
                todo.extend(reversed(more))
                continue
            if child.kind is not Kind.DIR:
                if create:
                    raise self._bad(entry, f"needs {part!r} on its path as a directory")
                return None
            stack.append(child)
            where.append(part)
        children = stack[-1].children
        assert children is not None
        found = children, tuple(where)
        if not lexical:
            self.walked[path] = found
        return found


def _name(entry: IndexEntry) -> str:
    """The entry's path for error messages: built only when one is raised."""
    return "/".join(entry.path)


def _set_attributes(node: _Node, entry: IndexEntry) -> None:
    node.mode = entry.mode
    node.uid, node.gid = entry.uid, entry.gid
    node.mtime_ns = entry.mtime_ns
    node.target = entry.target
    node.rdev = entry.rdev
    node.xattrs = entry.xattrs
    if entry.xattrs:
        # An index not built here (kept from older rules, or come from
        # elsewhere) is held to the same rule as a layer applied to disk.
        kind = EntryKind(entry.kind.value)
        node.xattrs = tuple(pair for pair in entry.xattrs if carried_xattr(pair[0], kind))


def _freeze(root: _Node) -> MergedTree:
    order: list[_Node] = []
    listings: list[list[tuple[str, _Node]]] = []  # of each node in order, sorted by name
    pending = [root]
    # Depth first by sorted name: the same image numbers the same way.
    while pending:
        node = pending.pop()
        node.names += 1
        if node.ino:
            continue
        order.append(node)
        node.ino = len(order)
        listing = sorted(node.children.items()) if node.children else []
        listings.append(listing)
        pending.extend(child for _, child in reversed(listing))
    inodes: dict[InodeNo, Inode] = {}
    children: dict[InodeNo, tuple[tuple[bytes, InodeNo], ...]] = {}
    by_name: dict[tuple[InodeNo, bytes], InodeNo] = {}
    parents: dict[InodeNo, InodeNo] = {ROOT_INO: ROOT_INO}
    for node, listing in zip(order, listings, strict=True):
        ino = InodeNo(node.ino)
        kind = node.kind
        if node.children is not None:
            encoded = tuple((_fsencode(name), InodeNo(child.ino)) for name, child in listing)
            children[ino] = encoded
            for name, child_ino in encoded:
                by_name[ino, name] = child_ino
            subdirs = [InodeNo(child.ino) for _, child in listing if child.kind is Kind.DIR]
            for subdir in subdirs:
                parents[subdir] = ino
            nlink = 2 + len(subdirs)
        else:
            nlink = node.names
        inodes[ino] = Inode(
            ino,
            # Linux symlinks are always 0777, whatever the archive says.
            _TYPE_BITS[kind] | (0o777 if kind is Kind.SYMLINK else node.mode),
            node.uid,
            node.gid,
            _size(node),
            node.mtime_ns,
            nlink,
            os.makedev(*node.rdev) if kind is Kind.CHAR or kind is Kind.BLOCK else 0,
            _fsencode(node.target) if kind is Kind.SYMLINK else b"",
            tuple((_fsencode(k), v) for k, v in node.xattrs) if node.xattrs else (),
            node.data,
        )
    return MergedTree(inodes, children, parents, by_name)


def _size(node: _Node) -> int:
    if node.data is not None:
        return node.data.size
    if node.kind is Kind.SYMLINK:
        return len(_fsencode(node.target))
    return 0
