"""The work dir, the stores and the cache dir must be paths no other user can change.

lazyfs checks a root directory once (``providers.private_dir``: its user's,
``0700``) and then trusts what is below it by path: a blob named by its
digest is not hashed again, a layer tree is served as extracted. A user who
can rename an entry on the way to that directory could point it at a
directory of root's (which lazyfs would then close and fill) or, once it
was checked, swap it for a directory of their own holding blobs and layers
of their making, which root would run as a container's rootfs. Mesos puts
its store under ``/tmp``, and a path there is only as safe as each step.

So each root directory given or defaulted must pass
``providers.mount_path.others_can_move``, the rule ``lazyfs mount`` holds
its mount point to: every step root's alone, or root's in a sticky
directory. One that exists must be root's and closed to others' writes
too: what another user put in it before lazyfs closed it (a ``runc`` state
directory whose hooks root would run, a symlink where the cache daemon
writes its pid) would be trusted as lazyfs' own, so ``/tmp`` itself, or a
directory made ``1777`` for Mesos, is refused rather than closed. The part
of the path that does not exist yet is made by lazyfs later; but where its
first missing directory would go in a sticky directory (``/tmp``), another
user could make it first, so it is made now and checked as made, and in
another directory others may write it is refused. Root in a user
namespace, where ``/`` is not its own, is refused every root directory.

Run by another user, lazyfs holds their root directories to the same rule,
with that user as root's equal: each step root's or theirs, in a directory
of root's or theirs that no third user may write (or theirs in a sticky
one), through no symlink of a third user's. Else a third user's link, say
``/tmp/shared/x`` to ``~/public_html``, would have lazyfs close the user's
own directory to ``0700`` and fill it, or, swapped in after the check,
hand the user blobs of the third user's making. A directory its group may
write counts as one others may write (a write grant in an ACL shows there
too), unless the group is the user's alone (``private_group``: Debian gives
each user one, and a umask of 002), as Debian's OpenSSH takes ``~/.ssh``.
First, though, such a user is told in one line naming the flag of a root
directory they cannot use at all (root's ``/var/lib/lazyfs``, say),
rather than fail on the first write with a bare "Permission denied".

Once a path passes, only root and the user can change what it names, so
lazyfs' later uses of it by path (``private_dir``, the stores, runc's state)
name what was checked: no third user's swap can come between. What remains
is what the check cannot see: root, the user's own processes, and a
directory made writable by the user or root after the check.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
from pathlib import Path

from lazyfs.cli_flags import source
from providers.errors import UsageError
from providers.mount_path import others_can_move, others_may_write
from providers.private_dir import PRIVATE


def check_roots(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    """UsageError, naming the flag, for a root directory another user could change, or (run
    by a user other than root) not this user's to use. ``roots``: each flag's directory,
    absolute. May make a root's first missing directory, where it would go in a sticky one."""
    user = os.geteuid()
    for flag, path in roots.items():
        where = source(args, flag)
        if user != 0:
            why = _not_ours(path)
            if why is not None:
                raise UsageError(f"{where} {path}: {why}; use a directory of your own (--{flag})")
        try:
            why = _unsafe(path, user)
        except OSError as error:
            why = f"cannot be looked at: {error.strerror or error}"
        if why is None:
            continue
        if user != 0:
            raise UsageError(
                f"{where} {path}: {why}, so another user could change what it names; use a"
                f" directory on a path only you and root can change (--{flag})"
            )
        raise UsageError(
            f"{where} {path}: {why}, so another user could change what it names; as root,"
            " use a directory only root can change (such as one under /var/lib)"
        )


def _not_ours(path: Path) -> str | None:
    """Why this user, not root, cannot use ``path`` as a root directory, or None."""
    at = path
    while not os.path.lexists(at):
        at = at.parent
    try:
        found = os.stat(at)
    except OSError as error:
        return f"cannot be looked at: {error.strerror or error}"
    if at == path:
        return None if found.st_uid == os.geteuid() else f"is a directory of uid {found.st_uid}"
    if not os.access(at, os.W_OK | os.X_OK):
        return f"would be made in {at}, where this user may not write"
    return None


def _unsafe(path: Path, user: int) -> str | None:
    """Why a user other than root and ``user`` could change what ``path`` names, or None. Its
    part that does not exist yet is checked where it would be made: in a sticky directory
    (``/tmp``), after making its first directory now (``PRIVATE``); in another that others
    may write, not at all (they could rename what is made there)."""
    missing = None
    at = path
    while not os.path.lexists(at):
        missing, at = at, at.parent
    why = others_can_move(str(at), user)
    if why is not None:
        return why
    if missing is None:  # there: what is in it is trusted
        found = os.stat(path)
        if found.st_uid != user:
            return f"is a directory of uid {found.st_uid}"
        if others_may_write(found, user):
            return ("is a directory others may write, and what they put in it would be trusted"
                    " (look at what it holds, then chmod go-w it)")  # fmt: skip
        return None
    holder = os.stat(at)
    if holder.st_uid not in (0, user):
        return f"would be made in {at}, a directory of uid {holder.st_uid}"
    if not others_may_write(holder, user):
        return None
    if not holder.st_mode & stat.S_ISVTX:
        return f"would be made in {at}, a directory others may write"
    # Never follows a link; one made there meanwhile, by whomever, is checked as it is.
    with contextlib.suppress(FileExistsError):
        os.mkdir(missing, PRIVATE)
    return others_can_move(str(missing), user)
