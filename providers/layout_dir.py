"""Opening a file of an OCI layout directory without leaving the directory: ``open_beneath``.

A layout directory is the image's, not ours: whoever wrote it may have made
``blobs/sha256/<hex>``, ``index.json``, ``oci-layout`` or ``blobs`` itself a
symlink to any file on the host, and we often run as root.  Following one
would read a file the image's author cannot, and the size and digest checks
would tell them its size and sha256 (or accept it as a layer once they know
it).  So every name below the layout root is opened one component at a
time, relative to the directory opened before it, with ``O_NOFOLLOW``:
a symlink anywhere below the root is refused, wherever it points.  The root
itself is named by the operator and may be a symlink.

Real layouts have no symlinks: ``skopeo`` (containers/image) and ``umoci``
write every blob as a regular file, a temporary file renamed into place,
and a skopeo ``--dest-shared-blob-dir`` leaves the blobs out of the layout
rather than linking them in.
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


def open_beneath(root: Path, name: str) -> int | None:
    """A read-only descriptor of the regular file ``name`` below ``root``; None if absent.

    ``name`` is relative and already clean (no ``..``, no empty parts).  None
    when a component is missing, when a directory component is not a
    directory, or when the file is not a regular file: as for any missing
    name.  BadImage when a component is a symlink, or cannot be opened for
    another reason.  The caller owns (and closes) the descriptor; its
    ``fstat`` is the file's size, not that of a path looked up again.
    """
    parts = name.split("/")
    try:
        current = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadImage(f"{root}: cannot read: {exc.strerror}") from exc
    try:
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            try:
                opened = os.open(part, _FILE_FLAGS if last else _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                _refuse(root, parts[: depth + 1], current, exc)
                return None
            os.close(current)
            current = opened
        if not stat.S_ISREG(os.fstat(current).st_mode):
            return None
        found, current = current, -1
        return found
    finally:
        if current >= 0:
            os.close(current)


def _refuse(root: Path, parts: list[str], parent: int, exc: OSError) -> None:
    """BadImage for a symlink or an error; returns for a component that is not there."""
    shown = root.joinpath(*parts)
    try:
        is_link = stat.S_ISLNK(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        is_link = False
    if is_link:
        # Say nothing of where it points: that is what must not leak.
        raise BadImage(f"{shown} is a symlink; a layout's files must be in it") from None
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
        raise BadImage(f"{shown}: cannot read: {exc.strerror}") from exc
