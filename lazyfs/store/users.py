"""The work dirs that use a store: image GC keeps what any of them uses.

A store may live outside the work dir (``--docker_store_dir``) and serve
several, as an agent's store serves its work dirs. What a container uses
is read from the records under its own work dir, so a GC pass run from one
work dir saw none of another's containers, and removed the layers under
their overlay and bind rootfses (a live fuse mount shows on its process's
command line; those mounts show only in the mount table, relative to a
scratch directory). Each provisioner therefore names its work dir in the
store (``users/<key>``, the key a hash of the path) as it starts, and GC
reads every work dir named there that still exists.

Written once per work dir, atomically, when missing; the store is closed
(``providers.private_dir``), so an entry was written by lazyfs. The work
dir it names is another matter: it may be gone (its entry is dropped), or
made again since by someone else (a work dir in ``/tmp`` after a reboot),
who could lay out records there to keep every image or to fail every GC
pass. So a work dir is read only while it is the store owner's, writable by
no one else, and (as root) on a path no other user can change
(``providers.mount_path``); else it is passed over. Blocking.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

from lazyfs.store.atomic import write_atomic
from providers.errors import Conflict
from providers.mount_path import others_can_move
from providers.private_dir import private_dir

USERS = "users"
_MAX_USERS = 4096  # a GC pass reads each one's records


def register(store_root: Path, work_dir: Path) -> None:
    """Name ``work_dir`` (absolute) among the users of the store at ``store_root``.

    Written only when it is not named already: every command starts with
    this, and one that frees space (``destroy`` of a container that filled
    the disk) must run on a full or read-only disk. A GC pass that found the
    work dir gone may drop its entry just as it is made again: that pass
    looks again after dropping it (``work_dirs``).
    """
    entry = _entry(store_root, work_dir)
    content = os.fsencode(work_dir) + b"\n"
    with contextlib.suppress(OSError):
        if entry.read_bytes() == content:
            return
    private_dir(entry.parent)
    write_atomic(entry, content, mode=0o600, durable=False)


def _entry(store_root: Path, work_dir: Path) -> Path:
    return store_root / USERS / hashlib.sha256(os.fsencode(work_dir)).hexdigest()[:32]


def work_dirs(store_root: Path) -> list[Path]:
    """The work dirs named among the store's users that are still there and trusted
    (module docstring), sorted. Entries of work dirs gone are dropped. Conflict past
    ``_MAX_USERS``: which of them to pass over cannot be chosen."""
    try:
        entries = sorted((store_root / USERS).iterdir())
        owner = os.stat(store_root).st_uid
    except FileNotFoundError:
        return []
    found = set()
    for entry in entries:
        try:
            path = Path(os.fsdecode(entry.read_bytes().rstrip(b"\n")))
        except OSError:
            continue
        if not path.is_absolute():
            continue
        if not os.path.lexists(path):
            with contextlib.suppress(OSError):
                entry.unlink()  # gone: its containers with it; made again, it registers
            if not os.path.lexists(path):
                continue
            # Made again meanwhile: its start may have found the entry still there.
            with contextlib.suppress(OSError):
                register(store_root, path)
        if _trusted(path, owner):
            found.add(path)
    if len(found) > _MAX_USERS:
        raise Conflict(
            f"{len(found)} work dirs use the store {store_root}, more than {_MAX_USERS}:"
            " image GC removes nothing"
        )
    return sorted(found)


def _trusted(path: Path, owner: int) -> bool:
    """Whether the work dir ``path`` is the store owner's alone, on a path none other moves."""
    try:
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
        return os.geteuid() != 0 or others_can_move(str(path)) is None
    except OSError:
        return False
