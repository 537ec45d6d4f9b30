"""Copy-up and metadata changes of the writable view, over ``lazyfs.fs.upper_state``.

``UpperCopy`` puts nodes in the upper directory (directories, metadata-only
copies, data) and applies metadata changes there; ``lazyfs.fs.upper`` adds
the operations on names and states the on-disk format and the contracts
all three modules follow.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from lazyfs.blobs.ranges import TarRangeReader
from lazyfs.fs.upper_disk import (
    DIR_FLAGS,
    PLACED,
    clear_work,
    exchange_at,
    is_started,
    mark_started,
    open_dir,
    proc_path,
    remove_xattr_at,
    set_xattr_at,
    truncate_at,
)
from lazyfs.fs.upper_load import load_upper
from lazyfs.fs.upper_state import (
    METACOPY_XATTR,
    REDIRECT_XATTR,
    Copy,
    Node,
    UpperError,
    UpperState,
)
from lazyfs.store.atomic import Staged, staged_file
from lazyfs.tree.lower import LowerTree
from lazyfs.tree.merge import DataRef, MergedTree
from providers.extents import data_extents

COPY_BLOCK = 1 << 20


class UpperCopy(UpperState):
    """``UpperState`` with copy-up and metadata changes.

    Starts from ``upper`` as a mount left it (``lazyfs.fs.upper_load``:
    UpperDamaged when it cannot), or sets up a fresh one when ``upper`` is
    empty and no mount used it before.  What a mount that died left in
    ``work`` is removed first.
    """

    def __init__(
        self, tree: MergedTree | LowerTree, upper: Path, work: Path, reader: TarRangeReader
    ) -> None:
        super().__init__(tree, upper, work, reader)
        try:
            clear_work(work)
            if is_started(work) or any(upper.iterdir()):
                self._nodes, first_free = load_upper(self.tree, self._root, upper)
                self._numbers = itertools.count(first_free)
            else:
                self.set_up_root()
            mark_started(work)
        except BaseException:
            os.close(self._root)
            raise

    @contextmanager
    def inside(self, directory: Node) -> Iterator[int]:
        """An fd of ``directory`` in upper, made there (with its parents) first if need be."""
        fd = self._copy_up_dir(directory)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- copy-up ----------------------------------------------------------------------

    def copy_up_dir(self, node: Node) -> None:
        """Make directory ``node`` (and its parents) exist in upper."""
        os.close(self._copy_up_dir(node))

    def _copy_up_dir(self, node: Node) -> int:
        """``copy_up_dir``, returning a new fd of the directory."""
        missing: list[Node] = []  # from node up to the first one already in upper
        here = node
        while here.copy is Copy.NONE:
            if not here.names:
                # Removed while a process still had it open.
                raise UpperError(errno.ENOENT, f"directory {here.ino} has no name left")
            missing.append(here)
            here = self.node(here.names[0][0])
        fd = open_dir(self._root, self._names(here))
        try:
            for below in reversed(missing):
                name = os.fsdecode(below.names[0][1])
                self.place(below, fd, name, make_dir)
                below.copy = Copy.DATA
                inner = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def copy_up_meta(self, node: Node) -> None:
        """Put ``node`` in upper without its bytes (a metacopy for a non-empty lower file).

        Not a node with no name left (unlinked, still open): nothing could name
        it in upper; its bytes are read below until a write copies them
        (``lazyfs.fs.writable_no_open``: into a file with no name either).
        """
        if node.copy is not Copy.NONE or node.unlinked:
            return
        if node.children is not None:
            self.copy_up_dir(node)
            return
        for which, (parent, name_bytes) in enumerate(node.names):
            with self.inside(self.node(parent)) as fd:
                name = os.fsdecode(name_bytes)
                if which:
                    with self.at(node) as (first_fd, first):
                        # Never follow: the first name may be an image's symlink to a host file.
                        os.link(
                            first, name, src_dir_fd=first_fd, dst_dir_fd=fd, follow_symlinks=False
                        )
                    continue
                # A metacopy: sized (sparse, no block written) and marked, its bytes still below.
                self.place(node, fd, name, lambda at, temp: make_entry(node, at, temp, meta=True))
        node.copy = Copy.META if stat.S_ISREG(node.mode) and node.size else Copy.DATA

    def place(
        self,
        node: Node,
        fd: int,
        name: str,
        make: Callable[[int, str], None],
        *,
        whiteout: bool = False,
    ) -> None:
        """Put ``node`` at ``name`` in directory ``fd`` whole, or leave ``name`` as it was.

        ``make(work_fd, temp)`` makes it in ``work``, where it gets its attributes;
        then one rename puts it in place (over the whiteout at ``name``, with
        ``whiteout``; a directory swaps with it, ``_swap_in_dir``). A failure on the way (an xattr
        the upper's filesystem refuses, ENOSPC, the mount killed) leaves no
        half-made entry at ``name``: none that the next try finds in its way,
        and none that the next mount loads without its attributes (a file of
        zeros without its metacopy mark, a directory that is not opaque).
        """
        # Unique in this mount, and what a mount that died left is gone (clear_work).
        temp = f"{PLACED}{next(self._temps)}"
        is_dir = stat.S_ISDIR(node.mode)
        work_fd = os.open(self.work, DIR_FLAGS)
        try:
            try:
                make(work_fd, temp)
                self._set_disk_attributes(node, work_fd, temp)
                if whiteout and is_dir:  # a directory replaces no whiteout: they swap
                    _swap_in_dir(work_fd, temp, fd, name)
                else:  # one non-directory replaces another, whiteout or none, at once
                    os.rename(temp, name, src_dir_fd=work_fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    (os.rmdir if is_dir else os.unlink)(temp, dir_fd=work_fd)
                raise
        finally:
            os.close(work_fd)

    async def copy_up_data(self, node: Node) -> None:
        """Put ``node``'s bytes in upper, once: a temporary file renamed over the metacopy.

        Concurrent callers wait for the first; a cancelled copy leaves the
        metacopy as it was (the temporary file is removed).
        """
        async with node.lock:
            self.copy_up_meta(node)
            if node.copy is Copy.DATA:
                return
            if node.unlinked:
                raise UpperError(errno.ENOENT, f"inode {node.ino} has no name to copy up to")
            data = node.lower_data
            assert data is not None  # META only for non-empty lower files
            # Modes and the rest are set below, as the node has them once the bytes are in.
            with staged_file(self.work, mode=None, prefix=f"copyup-{node.ino}-") as staged:
                await trio.to_thread.run_sync(self._copy_bytes, data, staged, limiter=self.limiter)
                _set_file_attributes(node, staged.file.fileno())
                # Names looked up after the copy: it may have been renamed meanwhile.
                # The upper directory is not kept across a crash: no directory sync.
                with self.at(node) as (fd, name):
                    staged.commit(Path(proc_path(fd, name)), sync_dir=False)
            for which in range(1, len(node.names)):
                self._replace_with_link(node, which)
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
                    with self.at(node) as (dir_fd, name):
                        truncate_at(dir_fd, name, 0)
                        remove_xattr_at(dir_fd, name, METACOPY_XATTR)
                        if node.lower is not None:
                            _remove_redirect(dir_fd, name)
                    node.copy = Copy.DATA
        else:
            await self.copy_up_data(node)
        if fd is not None:
            os.ftruncate(fd, size)
        else:
            with self.at(node) as (dir_fd, name):
                truncate_at(dir_fd, name, size)
        node.size = size
        self.touch(node)

    def _copy_bytes(self, data: DataRef, staged: Staged) -> None:
        # Runs in a worker thread: blocking reads, writes and the fsync, no trio.
        copy_lower_into(self.reader, data, staged.file.fileno())
        staged.sync()

    def _replace_with_link(self, node: Node, which: int) -> None:
        """Make name ``which`` of ``node`` a hardlink of its first name again, atomically."""
        temp = str(self.work / f"link-{next(self._temps)}")
        with self.at(node) as (fd, name):
            os.link(name, temp, src_dir_fd=fd, follow_symlinks=False)
        with self.at(node, which) as (fd, name):
            os.rename(temp, name, dst_dir_fd=fd)

    # -- metadata -----------------------------------------------------------------------

    def touch(self, node: Node, *, data: bool = True) -> None:
        now = time.time_ns()
        node.ctime_ns = now
        if data:
            node.mtime_ns = now

    # A node with no name left (unlinked, still open) changes in memory alone: fstat and
    # the reads of who has it open see memory, and no name will ever reach its disk copy.

    def set_mode(self, node: Node, mode: int) -> None:
        self.copy_up_meta(node)
        node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if not node.unlinked and not stat.S_ISLNK(node.mode):
            with self.at(node) as (fd, name):  # hardlinks share the upper inode
                os.chmod(name, stat.S_IMODE(mode), dir_fd=fd)
        self.touch(node, data=False)

    def set_owner(self, node: Node, uid: int, gid: int) -> None:
        self.copy_up_meta(node)
        if node.unlinked:
            node.uid, node.gid = uid, gid
            if stat.S_ISREG(node.mode):
                # As chown(2) leaves a file on Linux, root's too.
                lost = stat.S_ISUID | (stat.S_ISGID if node.mode & stat.S_IXGRP else 0)
                node.mode &= ~lost
            self.touch(node, data=False)
            return
        with self.at(node) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            node.uid, node.gid = uid, gid
            if not stat.S_ISLNK(node.mode):
                # chown(2) may drop setuid and setgid on disk: keep memory as the disk has it.
                found = os.stat(name, dir_fd=fd, follow_symlinks=False)
                node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(found.st_mode)
        self.touch(node, data=False)

    def set_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> None:
        self.copy_up_meta(node)
        node.atime_ns = node.atime_ns if atime_ns is None else atime_ns
        node.mtime_ns = node.mtime_ns if mtime_ns is None else mtime_ns
        if not node.unlinked:
            with self.at(node) as (fd, name):
                times = (node.atime_ns, node.mtime_ns)
                os.utime(name, ns=times, dir_fd=fd, follow_symlinks=False)
        node.ctime_ns = time.time_ns()

    def set_xattr(self, node: Node, name: bytes, value: bytes | None) -> None:
        """Set ``name`` (or remove it, with None: ENODATA when it is not there)."""
        if name.startswith(b"trusted.overlay."):
            # Ours: the upper format's markers.
            raise UpperError(errno.EPERM, f"{name!r} is reserved for the upper directory's format")
        if name.startswith(b"system."):
            # Anyone's on FUSE, ACLs unenforced; an ACL's mask would become the upper's group bits.
            raise UpperError(errno.EOPNOTSUPP, f"{name!r}: no system.* xattrs (POSIX ACLs) here")
        if value is None and name not in node.xattrs:
            raise UpperError(errno.ENODATA, f"inode {node.ino} has no xattr {name!r}")
        self.copy_up_meta(node)
        if not node.unlinked:
            with self.at(node) as (fd, where):
                if value is None:
                    remove_xattr_at(fd, where, name)
                else:
                    set_xattr_at(fd, where, name, value)
        if value is None:
            del node.xattrs[name]
        else:
            node.xattrs[name] = value
        self.touch(node, data=False)


def _set_file_attributes(node: Node, fd: int) -> None:
    """``node``'s owner, mode, times and xattrs on the regular file open at ``fd``."""
    os.chown(fd, node.uid, node.gid)
    os.chmod(fd, stat.S_IMODE(node.mode))
    os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
    for key, value in node.xattrs.items():
        os.setxattr(fd, key, value)


def _remove_redirect(dir_fd: int, name: str) -> None:
    """Drop a metacopy's redirect, if it has one: its bytes are its own now."""
    try:
        remove_xattr_at(dir_fd, name, REDIRECT_XATTR)
    except OSError as error:
        if error.errno != errno.ENODATA:
            raise


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


def _swap_in_dir(work_fd: int, temp: str, fd: int, name: str) -> None:
    """Put directory ``temp`` of ``work_fd`` at ``name`` of ``fd``, where a whiteout is:
    exchanged, then the whiteout removed. Without RENAME_EXCHANGE (EINVAL), the
    whiteout waits beside it in work, and goes back if the directory does not go in."""
    try:
        exchange_at(work_fd, temp, fd, name)
    except OSError as error:
        if error.errno != errno.EINVAL:
            raise
        aside = f"{temp}-whiteout"
        os.rename(name, aside, src_dir_fd=fd, dst_dir_fd=work_fd)
        try:
            os.rename(temp, name, src_dir_fd=work_fd, dst_dir_fd=fd)
        except BaseException:
            os.rename(aside, name, src_dir_fd=work_fd, dst_dir_fd=fd)
            raise
        temp = aside
    with contextlib.suppress(OSError):  # the directory is in: the next mount clears work
        os.unlink(temp, dir_fd=work_fd)  # the whiteout, in work now


def make_dir(dir_fd: int, name: str) -> None:
    """An empty directory, closed to others until its attributes are set."""
    os.mkdir(name, 0o700, dir_fd=dir_fd)


def make_entry(node: Node, dir_fd: int, name: str, *, meta: bool = False) -> None:
    """An entry of ``node``'s kind, without its attributes: for a file with ``meta``,
    ``node.size`` of holes marked as a metacopy (when not empty)."""
    kind = stat.S_IFMT(node.mode)
    if kind == stat.S_IFDIR:
        make_dir(dir_fd, name)
    elif kind == stat.S_IFREG:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        file = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            if meta:
                os.ftruncate(file, node.size)
        finally:
            os.close(file)
        if meta and node.size:
            set_xattr_at(dir_fd, name, METACOPY_XATTR, b"")
    elif kind == stat.S_IFLNK:
        os.symlink(node.target, name, dir_fd=dir_fd)
    else:
        os.mknod(name, node.mode, node.rdev, dir_fd=dir_fd)
