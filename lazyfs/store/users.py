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

Written once per work dir, atomically; the store is root's and closed
(``providers.private_dir``), so what is there was written by lazyfs.
Blocking.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lazyfs.store.atomic import write_atomic
from providers.private_dir import private_dir

USERS = "users"
_MAX_USERS = 4096  # read at most: a GC pass reads each one's records


def register(store_root: Path, work_dir: Path) -> None:
    """Name ``work_dir`` (absolute) among the users of the store at ``store_root``."""
    folder = store_root / USERS
    entry = folder / hashlib.sha256(os.fsencode(work_dir)).hexdigest()[:32]
    if entry.exists():
        return
    private_dir(folder)
    write_atomic(entry, os.fsencode(work_dir) + b"\n", mode=0o600)


def work_dirs(store_root: Path) -> list[Path]:
    """The work dirs named among the store's users that are still there, sorted."""
    try:
        entries = sorted((store_root / USERS).iterdir())[:_MAX_USERS]
    except FileNotFoundError:
        return []
    found = set()
    for entry in entries:
        try:
            path = Path(os.fsdecode(entry.read_bytes().rstrip(b"\n")))
        except OSError:
            continue
        if path.is_absolute() and path.is_dir():
            found.add(path)
    return sorted(found)
