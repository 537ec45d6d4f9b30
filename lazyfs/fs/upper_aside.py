"""What the upper sets aside in ``work`` while a name changes, so that a change is whole or none.

A remove, rename or link (``lazyfs.fs.upper``) changes the upper directory
in a few syscalls.  Done in the obvious order, a failure halfway (ENOSPC,
EROFS, EMLINK) left a name half changed: a file unlinked and its whiteout
not made, so the lower file showed through on the next mount; a file
renamed and the whiteout at its old name not made.  So:

- what needs room is made first, in ``work``, where nobody looks: the
  whiteout that is to go in (``made_whiteout``), a link to be renamed in;
  no room, and nothing has changed;
- what is replaced and cannot simply be renamed over (a directory, which
  holds whiteouts; or anything the change may have to put back) is renamed
  into ``work`` first (``set_aside``), and back if what should take its
  place does not go in; removed only once the change is done (``discard``);
- one rename puts each new entry in place.

The names in ``work`` start with ``GONE``.  A mount that dies halfway
leaves them: ``UpperCopy``'s start removes the files (``clear_work``), and
``clear_gone`` the directories, which hold only whiteouts.

Everything here is a plain blocking syscall on metadata; nothing yields.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lazyfs.fs.upper_disk import DIR_FLAGS, remove_dir_at

log = logging.getLogger(__name__)

GONE = "gone-"


@contextmanager
def work_dir(work: Path) -> Iterator[int]:
    """An fd of ``work``, closed again on exit."""
    fd = os.open(work, DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def made_whiteout(work_fd: int, temp: str) -> Iterator[str]:
    """A whiteout made in work as ``temp``, for the block to rename into place.

    Raises, with nothing made, when the upper has no room or is read-only.
    Removed if the block raises (it may have renamed it away by then).
    """
    os.mknod(temp, stat.S_IFCHR | 0o000, 0, dir_fd=work_fd)
    try:
        yield temp
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=work_fd)
        raise


@contextmanager
def set_aside(fd: int, name: str, work_fd: int, temp: str) -> Iterator[None]:
    """``name`` of ``fd`` moved into work as ``temp`` while the block runs.

    Put back at ``name`` if the block raises (the block must leave ``name``
    free then), else removed (``discard``).
    """
    os.rename(name, temp, src_dir_fd=fd, dst_dir_fd=work_fd)
    try:
        yield
    except BaseException:
        # Never over what the block left at ``name`` when its own undo failed too
        # (two failures in a row): that would lose it. Both stay then, this in work.
        try:
            os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            os.rename(temp, name, src_dir_fd=work_fd, dst_dir_fd=fd)
        else:
            log.error("%s stays set aside in the work directory as %s: its name is taken",
                      name, temp)  # fmt: skip
        raise
    discard(work_fd, temp)


def discard(work_fd: int, temp: str) -> None:
    """Remove ``temp`` from work: a file, or a directory of whiteouts.

    The change it was set aside for is done: a failure here only leaves it
    for the next mount to clear, so it is logged, not raised.
    """
    try:
        if stat.S_ISDIR(os.lstat(temp, dir_fd=work_fd).st_mode):
            remove_dir_at(work_fd, temp)
        else:
            os.unlink(temp, dir_fd=work_fd)
    except OSError as error:
        log.warning(
            "cannot remove %s from the work directory (the next mount will): %s", temp, error
        )


def remove_entry(
    fd: int,
    name: str,
    work_fd: int,
    gone: Callable[[], str],
    *,
    present: bool,
    directory: bool,
    whiteout: bool,
) -> None:
    """Take ``name`` out of directory ``fd``, leaving a whiteout there with ``whiteout``.

    ``present``: an entry is at ``name`` (a directory holding only whiteouts,
    with ``directory``).  ``gone()`` names a temporary in work.  Whole, or
    (raising) not at all.
    """
    with ExitStack() as steps:
        made = steps.enter_context(made_whiteout(work_fd, gone())) if whiteout else None
        if present and directory:
            # A rename replaces no directory by a whiteout, nor one holding whiteouts by nothing.
            steps.enter_context(set_aside(fd, name, work_fd, gone()))
        if made is not None:
            os.rename(made, name, src_dir_fd=work_fd, dst_dir_fd=fd)  # over a file in one step
        elif present and not directory:
            os.unlink(name, dir_fd=fd)


def move_entry(
    source_fd: int,
    old: str,
    dest_fd: int,
    new: str,
    work_fd: int,
    gone: Callable[[], str],
    *,
    taken: bool,
    directory: bool,
    whiteout: bool,
) -> None:
    """Rename ``old`` of ``source_fd`` to ``new`` of ``dest_fd``, leaving a whiteout at
    ``old`` with ``whiteout``.

    ``taken``: an entry is at ``new`` (a whiteout, or one ``old`` may replace;
    a directory there holds only whiteouts); ``directory``: ``old`` is one.
    Whole, or (raising) not at all.
    """
    with ExitStack() as steps:
        made = steps.enter_context(made_whiteout(work_fd, gone())) if whiteout else None
        if taken and (directory or made is not None):
            # A directory replaces no whiteout, nor a directory holding whiteouts; and
            # what is at ``new`` must go back if the whiteout does not go in.
            steps.enter_context(set_aside(dest_fd, new, work_fd, gone()))
        os.rename(old, new, src_dir_fd=source_fd, dst_dir_fd=dest_fd)
        if made is not None:
            try:
                os.rename(made, old, src_dir_fd=work_fd, dst_dir_fd=source_fd)
            except BaseException:
                os.rename(new, old, src_dir_fd=dest_fd, dst_dir_fd=source_fd)
                raise


def link_entry(
    source_fd: int,
    source: str,
    fd: int,
    name: str,
    work_fd: int,
    gone: Callable[[], str],
    *,
    whiteout: bool,
) -> None:
    """Link ``source`` of ``source_fd`` as ``name`` of ``fd``, over the whiteout there with
    ``whiteout``: made in work, then renamed over it in one step.  Whole, or not at all."""
    if not whiteout:
        os.link(source, name, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)
        return
    temp = gone()
    os.link(source, temp, src_dir_fd=source_fd, dst_dir_fd=work_fd, follow_symlinks=False)
    try:
        os.rename(temp, name, src_dir_fd=work_fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=work_fd)
        raise


def clear_gone(work: Path) -> None:
    """Remove the directories a mount that died left set aside in ``work``."""
    for entry in os.scandir(work):
        if entry.name.startswith(GONE) and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
