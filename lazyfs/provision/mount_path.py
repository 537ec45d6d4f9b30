"""Where root may mount a person's look inside an image: a path no other user can change.

``lazyfs mount`` checks its mount point (a directory, empty, not mounted),
then fetches and indexes the image for seconds, and only then does the mount
process mount there, by path.  A user who can rename an entry on that path
can swap the checked directory for a symlink meanwhile, and root's mount
would land where the symlink points: over ``/etc/cron.d`` or an empty
``/root/.ssh``, with files of that user's image in it.  Nothing between the
check and ``mount(2)`` can hold a path still; so as root, lazyfs mounts only
on a path every step of which only root can change.

``others_can_move`` walks the path as the kernel resolves it, symlinks
included (at most ``MAX_HOPS``).  Each entry it passes is safe when the
directory holding it is root's and writable by no one else, or is sticky
(``/tmp``) and the entry itself is root's: only then can no other user
rename, replace or remove it.  ACLs are not read: a directory that grants
another user write through an ACL alone is taken for safe.
"""

from __future__ import annotations

import os
import stat
from pathlib import PurePosixPath

MAX_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup


def others_can_move(path: str) -> str | None:
    """Why a user other than root could change what the absolute ``path`` names, or None.

    OSError when a step of it cannot be looked at (gone, not a directory, a loop).
    """
    todo = list(PurePosixPath(path).parts[1:])
    at = "/"
    hops = 0
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            at = os.path.dirname(at) or "/"
            continue
        here = os.path.join(at, name)
        holder, entry = os.stat(at), os.lstat(here)
        why = _unsafe(holder, entry)
        if why is not None:
            return f"{here} {why}"
        if stat.S_ISLNK(entry.st_mode):
            hops += 1
            if hops > MAX_HOPS:
                raise OSError(f"{path}: more than {MAX_HOPS} symlinks")
            target = os.readlink(here)
            todo = list(PurePosixPath(target).parts) + todo
            if target.startswith("/"):
                at = "/"
                todo = todo[1:]
            continue
        at = here
    return None


def _unsafe(holder: os.stat_result, entry: os.stat_result) -> str | None:
    """Why the entry ``entry`` of the directory ``holder`` is not root's alone, or None."""
    if holder.st_uid != 0:
        return f"is in a directory of uid {holder.st_uid}"
    if not holder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    if holder.st_mode & stat.S_ISVTX and entry.st_uid == 0:
        return None  # a sticky directory: only root may rename or remove root's entries
    if holder.st_mode & stat.S_ISVTX:
        return f"is owned by uid {entry.st_uid}, in a directory others may write"
    return "is in a directory others may write"
