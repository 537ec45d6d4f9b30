"""The writable state of a copy-on-write mount: the merged tree plus an upper directory.

``Upper`` holds, in memory, every inode the mount has changed (``Node``:
attributes, names, and for directories the children) over the immutable
``MergedTree``, which answers for every other inode, and mirrors every
change into ``upper`` in overlayfs' on-disk format, so the directory could
serve as kernel overlayfs' upperdir:

- a name deleted where a lower layer has one is a whiteout, a 0/0 character
  device;
- a directory made where a lower layer has a name is opaque
  (``trusted.overlay.opaque=y``);
- a regular file whose metadata changed but whose data did not is a
  metadata-only copy: an empty *sparse* file of the right size, mode, owner,
  times and xattrs, marked ``trusted.overlay.metacopy`` (empty value) as
  overlayfs marks it; its bytes are still read from the lower layer.  Data
  is copied up once (``copy_up_data``): into a temporary file in ``work``,
  in one worker thread, then renamed over the metacopy, so the upper path
  never holds half a file;
- a hardlinked file is copied up at all its names at once, as hardlinks;
- ``link`` and ``rename`` of a lower file copy no data: the file becomes a
  metacopy that also names where its bytes are,
  ``trusted.overlay.redirect=/its/lower/path``, as overlayfs does with
  metacopy on, so it finds them from any name;
- a lower directory that is renamed is made in upper (its lower children
  stay where they are) with a redirect to its lower path, as overlayfs does
  with ``redirect_dir=on``; the old name gets a whiteout.

Kernel overlayfs mounted with the layers as lowerdirs, this directory as
upperdir and ``metacopy=on`` (which turns ``redirect_dir`` on) shows the
tree the mount showed (a test checks it); without ``metacopy=on`` the
kernel refuses metacopy files.

The nodes are in ``lazyfs.fs.upper_state``, copy-up and metadata changes
in ``lazyfs.fs.upper_copy``; this module adds the operations on names.
Memory is authoritative while the mount runs: the upper directory is
written, and read back only when a new mount starts over an upper a mount
left (``lazyfs.fs.upper_load``), so a container's writes outlive its mount
process.  Times the mount keeps in memory only (ctimes, and mtimes it sets
as the kernel sets its own on the upper) come back as the upper has them.
A character device 0/0 cannot be made (EPERM, as overlayfs refuses it):
the upper would read it back as a whiteout.
Every file of the upper is reached through an fd of its directory
(``lazyfs.fs.upper_disk``), so paths inside the mount may be as long as
the kernel allows, whatever the upper's own path.  Inode numbers of the
lower tree stay as ``tree`` gives them; new inodes are numbered after the
highest.  ``RENAME_EXCHANGE`` swaps two names with one ``renameat2`` in
upper.  Every method raises ``UpperError`` (an errno and the facts) for
expected refusals, which the FUSE handlers answer with that errno
(``lazyfs.fs.boundary``); ``OSError`` from the upper directory propagates
(the handlers log it and answer EIO, or ENOSPC, EROFS and the like as
they are), and a name operation that raises it has changed nothing
(``Upper``).  No pyfuse3 here.  The synchronous methods, ``link`` and
``rename`` included, do only small metadata syscalls and never yield, so
each is atomic with respect to other trio tasks; ``copy_up_data`` and
``truncate`` yield only while bytes are copied, under the node's lock,
and look names up afterwards.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from lazyfs.blobs.ranges import TarRangeReader
from lazyfs.fs.upper_aside import (
    GONE,
    clear_gone,
    link_entry,
    move_entry,
    remove_entry,
    work_dir,
)
from lazyfs.fs.upper_copy import UpperCopy, make_entry
from lazyfs.fs.upper_disk import AT_FDCWD, exchange_at, set_xattr_at
from lazyfs.fs.upper_state import (
    METACOPY_XATTR,
    OPAQUE_XATTR,
    REDIRECT_XATTR,
    Copy,
    Node,
    UpperError,
    check_name,
)
from lazyfs.tree.lower import LowerTree
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree

__all__ = [
    "METACOPY_XATTR",
    "OPAQUE_XATTR",
    "REDIRECT_XATTR",
    "Copy",
    "Node",
    "Upper",
    "UpperError",
    "exchange_paths",
]

# rename(2)'s flags (linux/fs.h), which FUSE passes on as they are.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Upper(UpperCopy):
    """``UpperCopy`` with the operations on names: new, link, remove, rename.

    Each changes the upper directory whole or not at all, and memory only
    once the upper is changed (``lazyfs.fs.upper_aside`` says how): one that
    fails (ENOSPC, EROFS, EMLINK) changes nothing the mount shows, now or
    after a remount.
    """

    def __init__(
        self, tree: MergedTree | LowerTree, upper: Path, work: Path, reader: TarRangeReader
    ) -> None:
        clear_gone(work)
        super().__init__(tree, upper, work, reader)

    # -- names --------------------------------------------------------------------------

    def _gone(self) -> str:
        """A name in work not taken in this mount (what a mount that died left is gone)."""
        return f"{GONE}{next(self._temps)}"

    def _add(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None
        parent.children[name] = node.ino
        node.names.append((parent.ino, name))
        if node.children is not None:
            parent.subdirs += 1
        self.touch(parent)

    def _drop(self, parent: Node, name: bytes, node: Node) -> None:
        assert parent.children is not None
        del parent.children[name]
        node.names.remove((parent.ino, name))
        if node.children is not None:
            parent.subdirs -= 1
        self.touch(parent)
        self.touch(node, data=False)

    def new(
        self,
        parent_ino: int,
        name: bytes,
        mode: int,
        uid: int,
        gid: int,
        *,
        rdev: int = 0,
        target: bytes = b"",
    ) -> Node:
        """A new file, directory, symlink or special file ``name`` in ``parent``."""
        parent = self.directory(parent_ino)
        assert parent.children is not None
        check_name(name)
        if name in parent.children:
            raise UpperError(errno.EEXIST, f"{name!r} exists in directory {parent_ino}")
        if stat.S_ISCHR(mode) and rdev == 0:
            raise UpperError(errno.EPERM, f"{name!r}: a 0/0 device is a whiteout in the upper")
        if parent.mode & stat.S_ISGID:
            gid = parent.gid  # BSD group semantics, as the kernel gives them
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = time.time_ns()
        node = Node(
            InodeNo(next(self._numbers)),
            mode,
            uid,
            gid,
            0,
            now,
            now,
            now,
            rdev=rdev,
            target=target,
            copy=Copy.DATA,
        )
        hides = self._lower_has(parent, name)  # a whiteout is at ``name``, swapped out
        if stat.S_ISDIR(mode):
            node.children = {}
            node.opaque = hides
        elif stat.S_ISLNK(mode):
            node.size = len(target)
            node.mode = stat.S_IFLNK | 0o777
        with self.inside(parent) as fd:
            where = os.fsdecode(name)
            self.place(node, fd, where, lambda at, temp: make_entry(node, at, temp), whiteout=hides)
        self._nodes[node.ino] = node
        self._add(parent, name, node)
        return node

    async def link(self, ino: int, parent_ino: int, name: bytes) -> Node:
        """A new name for file ``ino``; its data stays where it is (a lower one: redirected).

        The file's ctime changes, as link(2) changes it.
        """
        node = self.node(ino)
        parent = self.directory(parent_ino)
        assert parent.children is not None
        if node.children is not None:
            raise UpperError(errno.EPERM, f"inode {ino} is a directory: no hardlinks to it")
        check_name(name)
        if name in parent.children:
            raise UpperError(errno.EEXIST, f"{name!r} exists in directory {parent_ino}")
        self._into_upper(node)
        whiteout = self._lower_has(parent, name)  # of what was deleted here: the link replaces it
        with (
            self.at(node) as (source_fd, source),
            self.inside(parent) as fd,
            work_dir(self.work) as work_fd,
        ):
            where = os.fsdecode(name)
            link_entry(source_fd, source, fd, where, work_fd, self._gone, whiteout=whiteout)
        self._add(parent, name, node)
        self.touch(node, data=False)
        return node

    def _into_upper(self, node: Node) -> None:
        """Put ``node`` in upper so that it may get a new name, without its bytes.

        A metacopy or a lower directory at a name its lower layer does not
        have there finds its lower part through a redirect.
        """
        self.copy_up_meta(node)
        if node.copy is Copy.META or (node.children is not None and node.lower is not None):
            with self.at(node) as (fd, name):
                set_xattr_at(fd, name, REDIRECT_XATTR, self.lower_path(node))

    def remove(self, parent_ino: int, name: bytes, *, directory: bool) -> Node:
        """Unlink (or rmdir) ``name``; a whiteout stays where a lower layer has the name."""
        parent = self.directory(parent_ino)
        node = self.lookup(parent_ino, name)
        if node is None:
            raise UpperError(errno.ENOENT, f"no {name!r} in directory {parent_ino}")
        if directory and node.children is None:
            raise UpperError(
                errno.ENOTDIR, f"{name!r} in directory {parent_ino} is not a directory"
            )
        if not directory and node.children is not None:
            raise UpperError(errno.EISDIR, f"{name!r} in directory {parent_ino} is a directory")
        if node.children:
            raise UpperError(errno.ENOTEMPTY, f"directory {name!r} in {parent_ino} is not empty")
        self._remove_from_disk(parent, name, node)
        self._drop(parent, name, node)
        return node

    def _remove_from_disk(self, parent: Node, name: bytes, node: Node) -> None:
        """Take ``name`` out of ``parent`` in upper, a whiteout left where a lower layer
        has it: whole, or (raising) not at all."""
        hides = self._lower_has(parent, name)
        if node.copy is Copy.NONE and not hides:
            return  # nothing of it in upper, nothing to hide
        if not hides and node.children is None:  # upper's own file: one unlink, no work dir
            with self.inside(parent) as fd:
                return os.unlink(name, dir_fd=fd)
        with self.inside(parent) as fd, work_dir(self.work) as work_fd:
            remove_entry(
                fd,
                os.fsdecode(name),
                work_fd,
                self._gone,
                present=node.copy is not Copy.NONE,
                directory=node.children is not None,
                whiteout=hides,
            )

    async def rename(
        self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int
    ) -> None:
        """Rename as rename(2): RENAME_NOREPLACE and RENAME_EXCHANGE; no data is copied.

        RENAME_WHITEOUT (overlayfs' own flag) answers EINVAL.
        """
        if flags == RENAME_EXCHANGE:
            self._exchange(old_parent, old, new_parent, new)
            return
        if flags & ~RENAME_NOREPLACE:
            raise UpperError(errno.EINVAL, f"rename flags {flags:#x} are not supported")
        source_dir, dest_dir = self.directory(old_parent), self.directory(new_parent)
        node = self.lookup(old_parent, old)
        if node is None:
            raise UpperError(errno.ENOENT, f"no {old!r} in directory {old_parent}")
        target = self.lookup(new_parent, new)
        self._check_move(node, dest_dir)
        if target is node:
            return
        if target is not None:
            self._check_replace(node, target, new, new_parent, flags)
        self._into_upper(node)
        self._hide_lower(node, dest_dir, new)  # where it is now, no lower layer sees it
        self._move_on_disk(source_dir, old, dest_dir, new, target, node)
        if target is not None:
            self._drop(dest_dir, new, target)
        self._drop(source_dir, old, node)
        self._add(dest_dir, new, node)

    def _move_on_disk(
        self,
        source_dir: Node,
        old: bytes,
        dest_dir: Node,
        new: bytes,
        target: Node | None,
        node: Node,
    ) -> None:
        """Rename ``old`` (``node``, in upper) to ``new`` (``target``'s, if any) in upper, a
        whiteout left at ``old`` where a lower layer has it: whole, or (raising) not at all."""
        # On disk at ``new``: the target's entry, or a whiteout where a lower name was deleted.
        taken = (
            target.copy is not Copy.NONE if target is not None else self._lower_has(dest_dir, new)
        )
        with (
            self.inside(source_dir) as source_fd,
            self.inside(dest_dir) as dest_fd,
            work_dir(self.work) as work_fd,
        ):
            move_entry(
                source_fd,
                os.fsdecode(old),
                dest_fd,
                os.fsdecode(new),
                work_fd,
                self._gone,
                taken=taken,
                directory=node.children is not None,
                whiteout=self._lower_has(source_dir, old),
            )

    def _check_replace(
        self, node: Node, target: Node, new: bytes, new_parent: int, flags: int
    ) -> None:
        if flags & RENAME_NOREPLACE:
            raise UpperError(errno.EEXIST, f"{new!r} exists in directory {new_parent}")
        if target.children is not None and node.children is None:
            raise UpperError(
                errno.EISDIR, f"a non-directory cannot replace directory {new!r} in {new_parent}"
            )
        if target.children is None and node.children is not None:
            raise UpperError(
                errno.ENOTDIR, f"a directory cannot replace non-directory {new!r} in {new_parent}"
            )
        if target.children:
            raise UpperError(errno.ENOTEMPTY, f"directory {new!r} in {new_parent} is not empty")

    def _check_move(self, node: Node, dest_dir: Node) -> None:
        """EINVAL for a directory moving into itself."""
        if node.children is None:
            return
        here: Node | None = dest_dir
        while here is not None and here.ino != ROOT_INO:
            if here is node:
                raise UpperError(errno.EINVAL, f"directory {node.ino} cannot move into itself")
            here = self.node(here.names[0][0]) if here.names else None

    def _exchange(self, a_parent: int, a: bytes, b_parent: int, b: bytes) -> None:
        """Swap what names ``a`` and ``b`` point at, atomically on disk (renameat2)."""
        a_dir, b_dir = self.directory(a_parent), self.directory(b_parent)
        a_node, b_node = self.lookup(a_parent, a), self.lookup(b_parent, b)
        if a_node is None or b_node is None:
            raise UpperError(
                errno.ENOENT, f"no {a!r} in directory {a_parent}, or no {b!r} in {b_parent}"
            )
        if a_node is b_node:
            return
        self._check_move(a_node, b_dir)  # both refusals before either copy-up
        self._check_move(b_node, a_dir)
        self._into_upper(a_node)
        self._into_upper(b_node)
        self._hide_lower(a_node, b_dir, b)  # where each is now, no lower layer sees it
        self._hide_lower(b_node, a_dir, a)
        with self.inside(a_dir) as a_fd, self.inside(b_dir) as b_fd:
            exchange_at(a_fd, a, b_fd, b)
        self._drop(a_dir, a, a_node)
        self._drop(b_dir, b, b_node)
        self._add(a_dir, a, b_node)
        self._add(b_dir, b, a_node)

    def _hide_lower(self, node: Node, parent: Node, name: bytes) -> None:
        """A directory of upper's own to be moved to ``name`` turns opaque if a lower layer has it.

        Before the move: where it is, no lower directory is (or it would be
        opaque already), so it shows the same either way.  A lower directory
        needs not: its redirect says where its lower part is.
        """
        if node.children is None or node.lower is not None or node.opaque:
            return
        if self._lower_has(parent, name):
            with self.at(node) as (fd, where):
                set_xattr_at(fd, where, OPAQUE_XATTR, b"y")
            node.opaque = True  # once it is: a next try sets it again


def exchange_paths(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> None:
    """renameat2(RENAME_EXCHANGE) of two paths: both must exist; raises OSError."""
    exchange_at(AT_FDCWD, os.fspath(a), AT_FDCWD, os.fspath(b))
