"""Removing the store's lock files no process holds.

A blob's or an image's lock file goes as its holder lets go of it
(``Store.lock``, ``Store.lock_async`` with ``remove``); an adoption's
(``lazyfs.provision.adopt_spawn.adopt_lock``) is held by the adopting
process until it exits, which leaves it; a pull killed leaves its own too.
One per name ever locked would stay for good (an agent pulling a new tag
per build), so image GC removes those no one holds (``sweep_locks``), and
with them the failures a pull recorded beside its lock for the processes
that waited for it (``lazyfs.store.pull_failures``), once that lock is free
and the record some minutes old: between its holder's release and a waiter's
taking of the lock, the lock is free, and the waiter has yet to read it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from providers.fslock import remove_lock, try_exclusive_lock

# The lock files that name one blob, image or adoption: one per name ever locked.
SWEPT = ("blob-", "image-", "adopt-")
# What a failed pull leaves beside its image's lock (``lazyfs.store.pull_failures``).
FAILED_SUFFIX = ".failed"
# How old (by its ``began``) such a record is before it is swept: its waiters have read it.
FAILED_KEPT = 300.0


def _fresh(record: Path) -> bool:
    """Whether the failure at ``record`` is younger than ``FAILED_KEPT``; one that cannot
    be read is not (swept)."""
    try:
        began = json.loads(record.read_bytes()).get("began")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(began, (int, float)) and time.time() - began < FAILED_KEPT


def sweep_locks(locks: Path) -> int:
    """Remove the lock files of ``SWEPT`` under ``locks`` that no process holds; how many.

    A pull's failure recorded beside a lock no one holds goes too (not counted),
    once ``FAILED_KEPT`` old.

    Safe against a process that opened one before and locks it after: every
    taker of these locks checks that it holds the file its path names, and
    opens the path again otherwise (``providers.fslock``). Blocking.
    """
    removed = 0
    for record in sorted(locks.glob(f"*{FAILED_SUFFIX}")):
        if _fresh(record):
            continue  # its waiters may be about to take the lock and read it
        lock = record.with_name(record.name.removesuffix(FAILED_SUFFIX) + ".lock")
        with try_exclusive_lock(lock) as free:
            if free:  # no pull of it under way, whose waiters would read it
                record.unlink(missing_ok=True)
                remove_lock(lock)
    for path in sorted(locks.glob("*.lock")):
        if not path.name.startswith(SWEPT):
            continue  # the store's usage lock, and any other, are not one per name
        with try_exclusive_lock(path) as free:
            if free:
                remove_lock(path)
                removed += 1
    return removed
