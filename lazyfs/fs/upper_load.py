"""The writable view read back from an upper directory a mount left: a remount's starting state.

``load_upper`` walks the upper (overlayfs' format, see ``lazyfs.fs.upper``)
over the merged tree and builds the nodes ``lazyfs.fs.upper_state``
keeps, so the new mount shows what the old one showed, and what kernel
overlayfs (``metacopy=on``) shows over the same lower and upper:

- a 0/0 character device hides the lower name (a whiteout); one where no
  lower layer has the name hides nothing and is removed;
- a directory is merged with the lower directory at its path, or at its
  ``trusted.overlay.redirect`` (``/absolute/lower/path``, or a name in the
  lower directory of its parent), unless ``trusted.overlay.opaque=y``;
- a regular file marked ``trusted.overlay.metacopy`` reads its bytes from
  the lower file at its redirect, or at its path; any other non-directory
  is wholly in upper;
- names of one upper inode are one node (a hardlink group).

Nodes in upper get new inode numbers, but a merged directory keeps its lower
directory's number: its lower children are made lazily, as on a fresh
mount, and name it as their parent.  So a lower directory may be merged at
one place only; an upper that merges one twice is refused.  A lower file
of several names gets the names still shown (the others are hidden or
covered).

The upper is written by the mount, yet holds whatever its container made:
names are any bytes, symlinks are never followed (every file is reached
through an fd of its directory, ``lazyfs.fs.upper_disk``), no recursion
(any depth loads), redirects are checked before use (components, no
``.``/``..``, from the lower root or one name), and every walk ends (the
upper and the lower tree are trees).  What cannot be read or makes no sense
is one ``UpperDamaged``, naming the path.  Inode numbers need not equal the
old mount's.  Blocking; run before the mount serves.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from lazyfs.fs.upper_disk import PATH_MAX, opened_dir, proc_path
from lazyfs.fs.upper_state import (
    METACOPY_XATTR,
    NAME_MAX,
    OPAQUE_XATTR,
    REDIRECT_XATTR,
    Copy,
    Node,
    lower_node,
)
from lazyfs.tree.lower import LowerTree
from lazyfs.tree.merge import ROOT_INO, Inode, InodeNo

OVERLAY_PREFIX = b"trusted.overlay."


class UpperDamaged(Exception):
    """The upper directory cannot be loaded: one line, with the path and why."""


def load_upper(tree: LowerTree, root_fd: int, upper: Path) -> tuple[dict[InodeNo, Node], int]:
    """The nodes of the view ``upper`` (open at ``root_fd``) makes of ``tree``; the next free ino.

    Raises UpperDamaged.
    """
    loader = _Loader(tree, root_fd)
    try:
        loader.load()
    except UpperDamaged as error:
        raise UpperDamaged(f"upper directory {upper}: {error}") from None
    except OSError as error:
        where = os.fsdecode(b"/".join(loader.here))
        why = error.strerror or str(error)
        raise UpperDamaged(f"upper directory {upper}: cannot read {where or '.'}: {why}") from None
    return loader.nodes, next(loader.numbers)


class _Loader:
    def __init__(self, tree: LowerTree, root_fd: int) -> None:
        self.tree = tree
        self.root_fd = root_fd
        self.nodes: dict[InodeNo, Node] = {}
        self.numbers = itertools.count(tree.max_ino() + 1)
        self.here: list[bytes] = []  # the directory being read, for messages
        self.by_inode: dict[tuple[int, int], Node] = {}
        self.redirected: list[Node] = []  # directories merged with a lower one not at their path

    def load(self) -> None:
        root_lower = self._lower(ROOT_INO)
        st = os.stat(".", dir_fd=self.root_fd, follow_symlinks=False)
        xattrs, _ = _xattrs(self.root_fd, ".")
        root = _node(ROOT_INO, st, xattrs, lower=root_lower)
        root.children = dict(self.tree.entries(ROOT_INO))
        self.nodes[ROOT_INO] = root
        pending: list[tuple[Node, list[bytes]]] = [(root, [])]
        # Depth first, with a stack: any depth loads.
        while pending:
            directory, names = pending.pop()
            self.here = names
            pending.extend(self._directory(directory, names))
        self.here = []
        self._check_redirects()
        self._lower_hardlinks()

    # -- one directory ----------------------------------------------------------------

    def _directory(self, directory: Node, names: list[bytes]) -> Iterator[tuple[Node, list[bytes]]]:
        """Fill in ``directory`` (in upper at ``names``); yields its subdirectories in upper."""
        assert directory.children is not None
        subdirs: list[tuple[Node, list[bytes]]] = []
        with opened_dir(self.root_fd, names) as fd:
            for name in _listing(fd):
                where = os.fsdecode(name)
                st = os.stat(where, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    if self._lower_child(directory, name) is None:
                        os.unlink(where, dir_fd=fd)  # hides nothing; in the way of a new name
                    else:
                        del directory.children[name]
                    continue
                if stat.S_ISDIR(st.st_mode):
                    child = self._subdirectory(directory, name, fd, where, st)
                    subdirs.append((child, [*names, name]))
                else:
                    child = self._file(directory, name, fd, where, st)
                directory.children[name] = child.ino
                child.names.append((directory.ino, name))
        directory.subdirs = sum(1 for ino in directory.children.values() if self._is_dir(ino))
        return iter(subdirs)

    def _subdirectory(
        self, parent: Node, name: bytes, fd: int, where: str, st: os.stat_result
    ) -> Node:
        xattrs, overlay = _xattrs(fd, where)
        opaque = overlay.get(OPAQUE_XATTR.encode()) == b"y"
        lower: Inode | None = None
        if not opaque:
            redirect = overlay.get(REDIRECT_XATTR.encode())
            if redirect is None:
                found = self._lower_child(parent, name)
            else:
                found = self._redirect(redirect, parent, name)
            if found is not None and stat.S_ISDIR(found.mode):
                lower = found
        if lower is None:
            node = _node(InodeNo(next(self.numbers)), st, xattrs, lower=None)
            node.children = {}
        else:
            # Its lower children name it by this number (UpperState.node makes them).
            if lower.ino in self.nodes:
                raise UpperDamaged(
                    f"{self._shown(name)} merges lower directory "
                    f"{os.fsdecode(self._lower_path(lower.ino))}, merged elsewhere already"
                )
            node = _node(lower.ino, st, xattrs, lower=lower)
            node.children = dict(self.tree.entries(lower.ino))
            if not _same(self._lower_child(parent, name), lower):
                self.redirected.append(node)
        node.opaque = opaque
        self.nodes[node.ino] = node
        return node

    def _file(self, parent: Node, name: bytes, fd: int, where: str, st: os.stat_result) -> Node:
        xattrs, overlay = _xattrs(fd, where)
        metacopy = stat.S_ISREG(st.st_mode) and METACOPY_XATTR.encode() in overlay
        lower: Inode | None = None
        if metacopy:
            redirect = overlay.get(REDIRECT_XATTR.encode())
            if redirect is None:
                lower = self._lower_child(parent, name)
            else:
                lower = self._redirect(redirect, parent, name)
            if lower is None or not stat.S_ISREG(lower.mode) or lower.data is None:
                raise UpperDamaged(f"metacopy {self._shown(name)} has no lower file with data")
            if lower.size != st.st_size:
                raise UpperDamaged(
                    f"metacopy {self._shown(name)} is {st.st_size} bytes, "
                    f"its lower file {lower.size}"
                )
        node = self.by_inode.get((st.st_dev, st.st_ino))
        if node is not None:  # another name of a file already loaded
            if not _same(node.lower, lower):
                raise UpperDamaged(
                    f"hardlinked metacopy {self._shown(name)} has another lower file "
                    "than its other names"
                )
            return node
        node = _node(InodeNo(next(self.numbers)), st, xattrs, lower=lower)
        if stat.S_ISLNK(st.st_mode):
            node.target = os.fsencode(os.readlink(where, dir_fd=fd))
            node.size = len(node.target)
        elif stat.S_ISREG(st.st_mode):
            node.size = st.st_size
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            node.rdev = st.st_rdev
        node.copy = Copy.META if metacopy else Copy.DATA
        self.nodes[node.ino] = node
        self.by_inode[(st.st_dev, st.st_ino)] = node
        return node

    # -- the lower tree ---------------------------------------------------------------

    def _lower_child(self, directory: Node, name: bytes) -> Inode | None:
        """What the lower part of ``directory`` has at ``name`` (as ``UpperState._lower_has``)."""
        if directory.lower is None or directory.opaque:
            return None
        found = self.tree.lookup(directory.lower.ino, name)
        return None if found is None else self._lower(found)

    def _redirect(self, value: bytes, parent: Node, name: bytes) -> Inode | None:
        """The lower inode redirect ``value`` (of ``name`` in ``parent``) names; None: none there.

        Absolute: a path from the lower root; else one name in the parent's
        lower directory.  UpperDamaged for anything else.
        """
        absolute = value.startswith(b"/")
        parts = value[1:].split(b"/") if absolute else [value]
        if len(value) > PATH_MAX or any(not _plain(part) for part in parts):
            raise UpperDamaged(f"{self._shown(name)} has a bad redirect {value[:64]!r}")
        if absolute:
            ino = ROOT_INO
        elif parent.lower is None or parent.opaque:
            return None
        else:
            ino = parent.lower.ino
        for part in parts:
            found = self.tree.lookup(ino, part)  # a non-directory has no children: None next
            if found is None:
                return None
            ino = found
        return self._lower(ino)

    def _lower_path(self, ino: InodeNo) -> bytes:
        names: list[bytes] = []
        while ino != ROOT_INO:
            parent, name = self.tree.names_of(ino)[0]
            names.append(name)
            ino = parent
        return b"/" + b"/".join(reversed(names))

    def _is_dir(self, ino: InodeNo) -> bool:
        found = self.nodes.get(ino)
        if found is not None:
            return found.children is not None
        return stat.S_ISDIR(self._lower(ino).mode)

    def _lower(self, ino: InodeNo) -> Inode:
        found = self.tree.inode(ino)
        if found is None:
            raise KeyError(ino)  # the tree's own numbers: never
        return found

    def _shown(self, name: bytes) -> str:
        return os.fsdecode(b"/".join([*self.here, name]))

    # -- after the walk ---------------------------------------------------------------

    def _lazily_shown(self, ino: InodeNo) -> bool:
        """Whether lower directory ``ino``, not loaded, is shown at its own lower path.

        Then its lower children are shown there too, made lazily.  Every
        loaded directory is shown (the walk reached it); one step up the
        lower tree at a time, so this ends at the root at the latest.
        """
        while True:
            parent, name = self.tree.names_of(ino)[0]
            loaded = self.nodes.get(parent)
            if loaded is not None:
                assert loaded.children is not None
                return loaded.children.get(name) == ino
            ino = parent

    def _check_redirects(self) -> None:
        """Refuse a lower directory merged where it is and again through a redirect."""
        for node in self.redirected:
            assert node.lower is not None
            parent, name = self.tree.names_of(node.lower.ino)[0]
            loaded = self.nodes.get(parent)
            if loaded is None:
                twice = self._lazily_shown(parent)
            else:
                assert loaded.children is not None
                twice = loaded.children.get(name) == node.ino and node.names[0] != (parent, name)
            if twice:
                path = os.fsdecode(self._lower_path(node.lower.ino))
                raise UpperDamaged(
                    f"lower directory {path} is shown at its place and through a redirect"
                )

    def _lower_hardlinks(self) -> None:
        """A lower file of several names, some hidden or covered, gets only the names shown."""
        for ino in self.tree.linked():
            if ino in self.nodes:
                continue
            names = self.tree.names_of(ino)
            shown = [(parent, name) for parent, name in names if self._shows(parent, name, ino)]
            if len(shown) == len(names):
                continue  # as UpperState.node makes it
            if shown:
                self.nodes[ino] = lower_node(self.tree, self._lower(ino), shown)

    def _shows(self, parent: InodeNo, name: bytes, ino: InodeNo) -> bool:
        loaded = self.nodes.get(parent)
        if loaded is not None:
            assert loaded.children is not None
            return loaded.children.get(name) == ino
        return self._lazily_shown(parent)


def _same(one: Inode | None, other: Inode | None) -> bool:
    """Whether both are the same lower inode (or none): by number, as the tree makes a new
    ``Inode`` each time it is asked (a packed tree does)."""
    if one is None or other is None:
        return one is other
    return one.ino == other.ino


def _plain(part: bytes) -> bool:
    """A name a redirect may hold: not empty, ``.`` or ``..``, no NUL, within NAME_MAX."""
    return 0 < len(part) <= NAME_MAX and part not in (b".", b"..") and not set(part) & {0, 47}


def _listing(fd: int) -> list[bytes]:
    """The names in directory ``fd`` (an O_PATH fd), sorted."""
    readable = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    try:
        return sorted(os.fsencode(name) for name in os.listdir(readable))
    finally:
        os.close(readable)


def _xattrs(fd: int, where: str) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
    """The xattrs of ``where`` in ``fd`` (never followed): its own, and overlayfs' markers."""
    path = proc_path(fd, where)
    try:
        keys = os.listxattr(path, follow_symlinks=False)
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}, {}
        raise
    own: dict[bytes, bytes] = {}
    overlay: dict[bytes, bytes] = {}
    for key in keys:
        encoded = os.fsencode(key)
        try:
            value = os.getxattr(path, key, follow_symlinks=False)
        except OSError as error:
            if error.errno == errno.ENODATA:  # removed since it was listed
                continue
            raise
        (overlay if encoded.startswith(OVERLAY_PREFIX) else own)[encoded] = value
    return own, overlay


def _node(
    ino: InodeNo, st: os.stat_result, xattrs: dict[bytes, bytes], *, lower: Inode | None
) -> Node:
    """A node in upper with the attributes the upper gives it."""
    return Node(
        ino=ino,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=0,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        xattrs=xattrs,
        lower=lower,
        copy=Copy.DATA,
    )
