"""Opening a file of an OCI layout directory without leaving the directory: ``open_beneath``.

A layout directory is the image's, not ours: whoever wrote it may have made
``blobs/sha256/<hex>``, ``index.json``, ``oci-layout`` or ``blobs`` itself a
symlink to any file on the host, and we often run as root.  Following one
would read a file the image's author cannot, and the size and digest checks
would tell them its size and sha256 (or accept it as a layer once they know
it).  So every name below the layout root is opened one component at a
time, relative to the directory opened before it, with ``O_NOFOLLOW``, and
a symlink met on the way is followed by hand only while it stays inside the
layout: one that leads out (an absolute target, or ``..`` above the root)
is refused, wherever it points.  The root itself is named by the operator
and may be a symlink.

Symlinks inside a layout are real: debuerreotype, which builds Debian's
official images, can write ``blobs/sha256/<hex>`` as links to
``../rootfs.tar.gz`` and the like.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from providers.errors import BadImage

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted as a blob must not hang the open; it is refused
# below as not a regular file, and means nothing for one.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_LINKS = 40  # as Linux's path walk
# Directories a name may go down, symlinks followed: a layout's own names are 3
# deep (blobs/sha256/<hex>); this bounds the descriptors held on the way.
_MAX_DEPTH = 64


def open_beneath(root: Path, name: str) -> int | None:
    """A read-only descriptor of the regular file ``name`` below ``root``; None if absent.

    ``name`` is relative and already clean (no ``..``, no empty parts).  None
    when a component is missing, when a directory component is not a
    directory, or when the file is not a regular file: as for any missing
    name.  Symlinks on the way are followed while they stay below ``root``;
    BadImage for one that leads out, for too many of them, or for a
    component that cannot be opened for another reason.  The caller owns
    (and closes) the descriptor; its ``fstat`` is the file's size, not that
    of a path looked up again.
    """
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadImage(f"{root}: cannot read: {exc.strerror}") from exc
    opened = [top]  # opened[i]: the directory of done[:i]; then the file
    done: list[str] = []
    todo = [part for part in reversed(name.split("/")) if part not in ("", ".")]
    links = 0
    via = root / name  # the last symlink followed: what a refusal names
    try:
        while todo:
            part = todo.pop()
            if part == "..":
                if not done:
                    raise _out(via)
                done.pop()
                os.close(opened.pop())
                continue
            where = opened[-1]
            try:
                found = os.open(part, _DIR_FLAGS if todo else _FILE_FLAGS, dir_fd=where)
            except OSError as exc:
                target = _link(root, [*done, part], where, exc)
                if target is None:
                    return None
                via = root.joinpath(*done, part)
                links += 1
                if links > _MAX_LINKS or target.startswith("/"):
                    raise _out(via) from None
                todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                continue
            opened.append(found)
            done.append(part)
            if len(done) > _MAX_DEPTH:
                raise BadImage(f"{root.joinpath(*done)}: deeper than {_MAX_DEPTH} directories")
        if len(opened) == 1 or not stat.S_ISREG(os.fstat(opened[-1]).st_mode):
            return None
        return opened.pop()
    finally:
        for fd in opened:
            os.close(fd)


def _out(link: Path) -> BadImage:
    # Say nothing of where it points: that is what must not leak.
    return BadImage(f"{link} is a symlink that leads out of the layout; its files must be in it")


def _link(root: Path, parts: list[str], parent: int, exc: OSError) -> str | None:
    """The target of the symlink ``parts[-1]`` that the open met; None for a component
    that is not there; BadImage for any other error."""
    try:
        if stat.S_ISLNK(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode):
            return os.readlink(parts[-1], dir_fd=parent)
    except OSError:
        pass
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
        raise BadImage(f"{root.joinpath(*parts)}: cannot read: {exc.strerror}") from exc
    return None
