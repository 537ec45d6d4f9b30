"""Removing a directory tree at any depth, without following links or crossing mounts.

``shutil.rmtree`` recurses once per directory level, so a tree deeper than
Python's recursion limit (an image of 2,000 nested directories, or a
container that made them) can never be removed with it.  ``remove_tree``
walks with one open directory at a time, relative to file descriptors, so
neither the recursion limit, nor ``PATH_MAX``, nor the open-file limit
bounds the depth; only memory for one name and one pending list per level.

The tree is hostile (image content, or a container's writes): symlinks are
removed, never followed; a directory on another filesystem than the top's
is a mount point and is refused rather than emptied (deleting through a
mount would reach shared data).  A bind mount from the same filesystem
cannot be told that way: callers unmount everything under the tree first.  Going back up uses
``..`` and checks it is the directory it came from, so a directory moved
during the walk stops it instead of sending it elsewhere.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Level:
    """One directory on the way down: its name in its parent, identity, subdirectories left."""

    name: str
    dev: int
    ino: int
    subdirs: list[str] = field(default_factory=list)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it; a missing ``path`` is fine.

    A symlink or file at ``path`` is unlinked. Raises OSError when something
    cannot be removed (EXDEV for a mount point inside the tree); what was
    removed before stays removed. Blocking.
    """
    path = Path(os.path.abspath(path))
    try:
        parent_fd = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        try:
            os.stat(path.name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        remove_at(parent_fd, path.name, str(path))
    finally:
        os.close(parent_fd)


def remove_at(parent_fd: int, name: str, shown: str) -> None:
    """``remove_tree`` of ``name`` in the directory open as ``parent_fd`` (``shown`` in
    errors); FileNotFoundError when it is not there. Without recursion, and with one
    descriptor however deep."""
    top = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(top.st_mode):
        _empty(parent_fd, name, top, shown)
        os.rmdir(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)


def _empty(parent_fd: int, name: str, top: os.stat_result, shown: str) -> None:
    """Remove everything inside directory ``name`` of ``parent_fd``, deepest first."""
    fd = _open_dir(parent_fd, name, top, shown)
    levels = [_Level(name, top.st_dev, top.st_ino)]
    try:
        _walk(fd, levels, top.st_dev, shown)
    except OSError as error:
        if isinstance(error.filename, str) and not error.filename.startswith("/"):
            # A name relative to some directory deep inside: say where.
            where = _where(shown, levels, error.filename)
            raise OSError(error.errno, error.strerror, where) from error
        raise


def _walk(fd: int, levels: list[_Level], dev: int, shown: str) -> None:
    """Empty ``levels[0]``, open as ``fd`` (closed here); ``levels`` is where the walk is."""
    try:
        levels[0].subdirs = _unlink_files(fd)
        while True:
            here = levels[-1]
            if here.subdirs:
                child = here.subdirs.pop()
                try:
                    found = os.stat(child, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISDIR(found.st_mode):  # replaced meanwhile
                    os.unlink(child, dir_fd=fd)
                    continue
                if found.st_dev != dev:
                    raise OSError(errno.EXDEV, "a mount point inside the tree", child)
                child_fd = _open_dir(fd, child, found, shown)
                os.close(fd)
                fd = child_fd
                levels.append(_Level(child, found.st_dev, found.st_ino))
                levels[-1].subdirs = _unlink_files(fd)
                continue
            if len(levels) == 1:
                return
            # Empty now: go up and remove it there.
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            above = levels[-2]
            seen = os.fstat(up)
            if (seen.st_dev, seen.st_ino) != (above.dev, above.ino):
                os.close(up)
                raise OSError(errno.ESTALE, "the tree moved while it was removed", shown)
            os.close(fd)
            fd = up
            levels.pop()
            os.rmdir(here.name, dir_fd=fd)
    finally:
        os.close(fd)


def _open_dir(parent_fd: int, name: str, expected: os.stat_result, shown: str) -> int:
    """Open directory ``name`` of ``parent_fd``, refusing a symlink or a swapped entry.

    Not as root, a directory of ours that we may not list or change (an
    image's ``0555 /usr/bin``, applied as the tar says) is made ``0700`` first:
    it is going. It is opened ``O_PATH`` (whatever its mode), checked to be
    the one expected, changed, and opened for reading through ``/proc``, never
    through a name a symlink could replace. Root needs no such bits.
    """
    root = os.geteuid() == 0
    flags = _DIR_FLAGS if root else os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=parent_fd)
    try:
        seen = os.fstat(fd)
        if (seen.st_dev, seen.st_ino) != (expected.st_dev, expected.st_ino):
            raise OSError(errno.ESTALE, "the tree changed while it was removed", shown)
        if root:
            return fd
        itself = f"/proc/self/fd/{fd}"
        if seen.st_mode & 0o700 != 0o700 and seen.st_uid == os.geteuid():
            os.chmod(itself, 0o700)  # unlinking in it needs write and search
        opened = os.open(itself, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return opened


def _unlink_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; the names of its subdirectories."""
    with os.scandir(fd) as listing:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    subdirs = []
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
        else:
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: fine
                os.unlink(name, dir_fd=fd)
    return subdirs


def _where(top: str, levels: list[_Level], name: str) -> str:
    """A readable path for an error about ``name`` where the walk is: long ones shortened."""
    parts = [level.name for level in levels[1:]] + [name]
    if len(parts) > 7:
        parts = [*parts[:3], f"...{len(parts) - 6} more...", *parts[-3:]]
    return "/".join([top, *parts])
