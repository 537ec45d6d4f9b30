"""The writable state of a copy-on-write mount: the merged tree plus an upper directory.

``Upper`` holds, in memory, every inode the mount has touched (``Node``:
attributes, names, and for directories the children) over the immutable
``MergedTree``, and mirrors every change into ``upper`` in overlayfs'
on-disk format, so the directory could serve as kernel overlayfs' upperdir:

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
  ``link`` and ``rename`` of a file copy its data up first, since a
  metacopy at a name where no lower layer has the file would need
  overlayfs' redirect xattrs, which are not written.

Kernel overlayfs mounted with the layers as lowerdirs, this directory as
upperdir and ``metacopy=on`` shows the tree the mount showed (a test
checks it); without ``metacopy=on`` the kernel refuses metacopy files.

The nodes, copy-up and metadata changes are in ``lazyfs.fs.upper_state``;
this module adds the operations on names.  Memory is authoritative: the
upper directory is written, never read back, so it must be empty at start
(reusing an upper dir is not supported yet).  Inode numbers of the lower
tree stay as ``tree`` gives them; new inodes are numbered after the
highest.  Directories that come from lower layers cannot be renamed
(``EXDEV``, as overlayfs without redirect_dir answers); ``RENAME_EXCHANGE``
swaps two names with one ``renameat2`` in upper, after copying files up.
Every method raises ``UpperError`` (an errno and the facts) for expected
refusals, which the FUSE handlers answer with that errno
(``lazyfs.fs.boundary``); ``OSError`` from the upper directory propagates
(the handlers log it and answer EIO).  No pyfuse3 here.  The
synchronous methods do only small metadata syscalls and never yield, so
each is atomic with respect to other trio tasks; the async ones
(``copy_up_data``, ``truncate``, ``link``, ``rename``) yield only while
bytes are copied, under the node's lock, and check names afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from pathlib import Path

from lazyfs.fs.upper_state import (
    METACOPY_XATTR,
    OPAQUE_XATTR,
    Copy,
    Node,
    UpperError,
    UpperState,
)
from lazyfs.tree.merge import ROOT_INO, InodeNo

__all__ = ["METACOPY_XATTR", "OPAQUE_XATTR", "Copy", "Node", "Upper", "UpperError"]

# rename(2)'s flags (linux/fs.h), which FUSE passes on as they are.
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Upper(UpperState):
    """``UpperState`` with the operations on names: new, link, remove, rename."""

    # -- names --------------------------------------------------------------------------

    def _free_name(self, parent: Node, name: bytes) -> Path:
        """Make ``parent`` exist in upper and ``name`` free there (no whiteout); its path."""
        if len(name) > 255:
            raise UpperError(errno.ENAMETOOLONG, f"name {name!r} is longer than 255 bytes")
        path = self.copy_up_dir(parent) / os.fsdecode(name)
        if self._lower_has(parent, name):
            path.unlink()  # the whiteout of what was deleted here
        return path

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
        if name in parent.children:
            raise UpperError(errno.EEXIST, f"{name!r} exists in directory {parent_ino}")
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
        path = self._free_name(parent, name)
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFDIR:
            node.children = {}
            node.opaque = self._lower_has(parent, name)
            path.mkdir(mode=0o700)
        elif kind == stat.S_IFREG:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        elif kind == stat.S_IFLNK:
            os.symlink(target, path)
            node.size = len(target)
            node.mode = stat.S_IFLNK | 0o777
        else:
            os.mknod(path, mode, rdev)
        self._set_disk_attributes(node, path)
        self._nodes[node.ino] = node
        self._add(parent, name, node)
        return node

    async def link(self, ino: int, parent_ino: int, name: bytes) -> Node:
        """A new name for file ``ino``: its data is copied up first.

        A metacopy at a new name would find no lower data at that path
        (overlayfs would need a redirect), so the bytes go up whole, once.
        """
        node = self.node(ino)
        parent = self.directory(parent_ino)
        assert parent.children is not None
        if node.children is not None:
            raise UpperError(errno.EPERM, f"inode {ino} is a directory: no hardlinks to it")
        await self.copy_up_data(node)
        # Checked after the copy: other tasks ran meanwhile.
        if name in parent.children:
            raise UpperError(errno.EEXIST, f"{name!r} exists in directory {parent_ino}")
        os.link(self.path(node), self._free_name(parent, name))
        self._add(parent, name, node)
        return node

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
        self._whiteout(parent, name)
        return node

    def _remove_from_disk(self, parent: Node, name: bytes, node: Node) -> None:
        if node.copy is Copy.NONE:
            return
        path = self.path(parent) / os.fsdecode(name)
        if node.children is None:
            path.unlink()
            return
        for hidden in path.iterdir():
            hidden.unlink()  # an empty merged directory holds only whiteouts in upper
        path.rmdir()

    def _whiteout(self, parent: Node, name: bytes) -> None:
        if self._lower_has(parent, name):
            os.mknod(self.copy_up_dir(parent) / os.fsdecode(name), stat.S_IFCHR | 0o000, 0)

    async def rename(
        self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int
    ) -> None:
        """Rename as rename(2): RENAME_NOREPLACE and RENAME_EXCHANGE; EXDEV for lower directories.

        RENAME_WHITEOUT (overlayfs' own flag) answers EINVAL.
        """
        if flags == RENAME_EXCHANGE:
            await self._exchange(old_parent, old, new_parent, new)
            return
        if flags & ~RENAME_NOREPLACE:
            raise UpperError(errno.EINVAL, f"rename flags {flags:#x} are not supported")
        source_dir, dest_dir = self.directory(old_parent), self.directory(new_parent)
        node = self.lookup(old_parent, old)
        if node is None:
            raise UpperError(errno.ENOENT, f"no {old!r} in directory {old_parent}")
        await self._movable(node, dest_dir)
        if self.lookup(old_parent, old) is not node:
            # Renamed or removed by another task meanwhile.
            raise UpperError(
                errno.ENOENT, f"{old!r} in directory {old_parent} went while its data was copied up"
            )
        # From here on nothing yields: the checks hold until the rename is done.
        target = self.lookup(new_parent, new)
        if target is node:
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise UpperError(errno.EEXIST, f"{new!r} exists in directory {new_parent}")
            if target.children is not None and node.children is None:
                raise UpperError(
                    errno.EISDIR,
                    f"a non-directory cannot replace directory {new!r} in {new_parent}",
                )
            if target.children is None and node.children is not None:
                raise UpperError(
                    errno.ENOTDIR,
                    f"a directory cannot replace non-directory {new!r} in {new_parent}",
                )
            if target.children:
                raise UpperError(errno.ENOTEMPTY, f"directory {new!r} in {new_parent} is not empty")
        # Both parents exist in upper before anything moves.
        source_path = self.copy_up_dir(source_dir) / os.fsdecode(old)
        if target is not None:
            self._remove_from_disk(dest_dir, new, target)
            self._drop(dest_dir, new, target)
            dest_path = self.copy_up_dir(dest_dir) / os.fsdecode(new)
        else:
            dest_path = self._free_name(dest_dir, new)
        os.rename(source_path, dest_path)
        self._drop(source_dir, old, node)
        self._add(dest_dir, new, node)
        self._hide_lower(node, dest_dir, new, dest_path)
        self._whiteout(source_dir, old)

    async def _movable(self, node: Node, dest_dir: Node) -> None:
        """Refuse what cannot move into ``dest_dir``; copy a file's data up so it can.

        May yield (while data is copied): the caller checks its names again.
        """
        self._check_move(node, dest_dir)
        if node.children is None:
            await self.copy_up_data(node)

    def _check_move(self, node: Node, dest_dir: Node) -> None:
        if node.children is None:
            return
        if node.lower is not None:
            # A lower directory: overlayfs answers so without redirect_dir.
            raise UpperError(
                errno.EXDEV, f"directory {node.ino} is from a lower layer: it cannot move"
            )
        here: Node | None = dest_dir
        while here is not None and here.ino != ROOT_INO:  # not into itself
            if here is node:
                raise UpperError(errno.EINVAL, f"directory {node.ino} cannot move into itself")
            here = self.node(here.names[0][0]) if here.names else None

    async def _exchange(self, a_parent: int, a: bytes, b_parent: int, b: bytes) -> None:
        """Swap what names ``a`` and ``b`` point at, atomically on disk (renameat2)."""
        a_dir, b_dir = self.directory(a_parent), self.directory(b_parent)
        a_node, b_node = self.lookup(a_parent, a), self.lookup(b_parent, b)
        if a_node is None or b_node is None:
            raise UpperError(
                errno.ENOENT, f"no {a!r} in directory {a_parent}, or no {b!r} in {b_parent}"
            )
        if a_node is b_node:
            return
        self._check_move(b_node, a_dir)  # both refusals before either copy-up
        await self._movable(a_node, b_dir)
        await self._movable(b_node, a_dir)
        if self.lookup(a_parent, a) is not a_node or self.lookup(b_parent, b) is not b_node:
            # Renamed or removed by another task meanwhile.
            raise UpperError(errno.ENOENT, f"{a!r} or {b!r} went while data was copied up")
        # A directory may have moved meanwhile too: into the other one, say.
        self._check_move(a_node, b_dir)
        self._check_move(b_node, a_dir)
        # From here on nothing yields.  Both names are in upper now: files were
        # copied up, and directories that may move were made there.
        a_path = self.copy_up_dir(a_dir) / os.fsdecode(a)
        b_path = self.copy_up_dir(b_dir) / os.fsdecode(b)
        exchange_paths(a_path, b_path)
        self._drop(a_dir, a, a_node)
        self._drop(b_dir, b, b_node)
        self._add(a_dir, a, b_node)
        self._add(b_dir, b, a_node)
        self._hide_lower(a_node, b_dir, b, b_path)
        self._hide_lower(b_node, a_dir, a, a_path)

    def _hide_lower(self, node: Node, parent: Node, name: bytes, path: Path) -> None:
        """A directory moved to ``name`` in ``parent`` turns opaque if a lower layer has it."""
        if node.children is not None and self._lower_has(parent, name) and not node.opaque:
            node.opaque = True
            os.setxattr(path, OPAQUE_XATTR, b"y")


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both paths must exist; raises OSError."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), 2) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(a), None, str(b))
