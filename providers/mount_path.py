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
rename, replace or remove it.  ACLs are not read, and need not be: an ACL
lets another user write only as far as its mask allows, and ``stat`` shows
the mask as the group's bits, so such a directory is one "others may write".

Asked for another ``user`` (``lazyfs.cli_roots``: the root directories of
a lazyfs run by that user), the same walk takes that user for root's
equal: a step may be in a directory of root's or theirs, or be theirs in a
sticky one, and a symlink on the way must be root's or theirs too, so no
third user's link leads them into a directory of their own. A directory
writable by a group of that user's alone (``private_group``) is theirs.

Owners and modes are only as true as the filesystem that gives them: on a
FUSE filesystem (a user's, mounted ``allow_other``) its server says what it
likes, and answers ``mount(2)``'s lookup as it likes, so a path through one
is refused; and so is one through ``/proc``, whose magic links lead where
no readlink says.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import stat
from pathlib import PurePosixPath

MAX_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup


def others_can_move(path: str, user: int = 0) -> str | None:
    """Why a user other than root and ``user`` could change what the absolute ``path`` names,
    or None.

    OSError when a step of it cannot be looked at (gone, not a directory, a loop).
    """
    todo = list(PurePosixPath(path).parts[1:])
    at = "/"
    hops = 0
    answered = _answered_by_others()
    while todo:
        name = todo.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            at = os.path.dirname(at) or "/"
            continue
        here = os.path.join(at, name)
        holder, entry = os.stat(at), os.lstat(here)
        kind = answered.get(entry.st_dev)
        if kind is not None:
            return f"{here} is on a {kind} filesystem, whose owners and links prove nothing"
        why = _unsafe(holder, entry, user)
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


def _unsafe(holder: os.stat_result, entry: os.stat_result, user: int) -> str | None:
    """Why the entry ``entry`` of the directory ``holder`` is not root's and ``user``'s alone,
    or None."""
    ours = (0, user)
    if holder.st_uid not in ours:
        return f"is in a directory of uid {holder.st_uid}"
    if others_may_write(holder, user):
        if not holder.st_mode & stat.S_ISVTX:
            return "is in a directory others may write"
        if entry.st_uid not in ours:  # sticky: only its owner and root rename others' entries
            return f"is owned by uid {entry.st_uid}, in a directory others may write"
    if user != 0 and stat.S_ISLNK(entry.st_mode) and entry.st_uid not in ours:
        # Fixed once made, but made by a third user when they could write here, or given
        # to them: where they chose to lead this user is not followed.
        return f"is a symlink of uid {entry.st_uid}"
    return None


def others_may_write(found: os.stat_result, user: int = 0) -> bool:
    """Whether a user other than root and ``user`` may write the file ``found`` by its mode:
    its others' bit, or its group's unless that group is ``user``'s alone."""
    if found.st_mode & stat.S_IWOTH:
        return True
    return bool(found.st_mode & stat.S_IWGRP) and not private_group(found.st_gid, user)


@functools.lru_cache(maxsize=16)
def private_group(gid: int, user: int) -> bool:
    """Whether group ``gid`` is ``user``'s alone, as Debian gives each user a group of their
    own (and a umask of 002, so their directories are group-writable): the user's primary
    group, of the user's name, in one entry naming no other member, and no other account's
    primary group. Root has none.

    Only as true as the account databases: a member added later, or an account the
    database does not list, is not seen.
    """
    if user == 0:
        return False
    try:
        account = pwd.getpwuid(user)
    except KeyError:
        return False
    # Every entry of that gid: a second one (a group of another name) adds members too.
    # A directory service may list none (sssd does not enumerate): then its one answer.
    entries = [group for group in grp.getgrall() if group.gr_gid == gid] or _group(gid)
    if account.pw_gid != gid or [group.gr_name for group in entries] != [account.pw_name]:
        return False
    if any(member != account.pw_name for member in entries[0].gr_mem):
        return False
    return all(other.pw_gid != gid or other.pw_uid == user for other in pwd.getpwall())


def _group(gid: int) -> list[grp.struct_group]:
    try:
        return [grp.getgrgid(gid)]
    except KeyError:
        return []


def _answered_by_others() -> dict[int, str]:
    """The devices of this mount namespace's FUSE and proc filesystems, with their types."""
    found = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            fields = line.split()
            # ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
            if "-" not in fields[6:]:
                continue
            kind = fields[fields.index("-", 6) + 1]
            if kind.startswith("fuse") or kind == "proc":
                major, _, minor = fields[2].partition(":")
                found[os.makedev(int(major), int(minor))] = kind
    return found
