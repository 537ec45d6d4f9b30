"""Room on the chunk cache's filesystem: the headroom kept free there, and waiting for room.

The size limit (``--cache_size``) says nothing of the disk: a 10 GiB limit
on a smaller or nearly full filesystem would let chunk writes take its last
byte, and every write after fail. So ``DiskCache.put`` also looks, once
before each chunk it writes (one ``statvfs``, next to the write's fsync),
at the free space: when writing the chunk would leave less than the
headroom free, it evicts least recently used chunks to make up the
difference, as it does for the limit; and a write that fails for want of
room anyway (ENOSPC, EDQUOT: another writer took it meanwhile, or inodes
ran out) evicts a headroom's worth and is tried once more.

The headroom: ``HEADROOM_BYTES`` (64 MiB), or ``1/HEADROOM_SHARE`` (1/32,
about 3 %) of the filesystem when that is less. Every cached byte can be
fetched again, so the cache is the last thing that should take a disk's
last bytes: the headroom leaves the store's pulls, a mount's upper, the
daemon's records and logs room to write. It also covers what the daemon
writes between one look and the next: chunk writes run side by side (8 of
64 KiB in flight, ``lazyfs.cache.flight``), so 64 MiB is over a hundred
times that. Not image GC's 10 % (``lazyfs.gc.config``): that is a share
of the store's disk GC works towards every few minutes, and on a large
disk it would keep tens of GB from the cache; a fixed floor is what a
write needs. The share keeps a small filesystem (a 16 MiB tmpfs: 512 KiB)
mostly the cache's.

Background fetch that stops for want of room even so (every chunk pinned,
or the disk filled by others) waits and tries again (``room_wait``): a few
times quickly, then at most every minute, ``ROOM_TRIES`` times in all
(about a quarter of an hour), logged each time, before it leaves the blob
partial for the next mount to ask again. A background fetch whose origin
fails for now (out of reach, overloaded) waits by the same schedule, or
as long as the origin's Retry-After asks (``lazyfs.cache.origin_wait``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

HEADROOM_BYTES = 64 << 20
HEADROOM_SHARE = 32
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})

ROOM_TRIES = 20
ROOM_WAIT_FIRST = 1.0  # seconds; doubled after each try
ROOM_WAIT_MOST = 60.0


def headroom(where: int | Path) -> int:
    """The bytes to keep free on the filesystem ``where`` (a file descriptor or path) is."""
    vfs = os.statvfs(where)
    return min(HEADROOM_BYTES, vfs.f_blocks * vfs.f_frsize // HEADROOM_SHARE)


def free_bytes(fd: int | None) -> int | None:
    """The bytes free on the filesystem of ``fd``; None where it tells no sizes (its
    writes alone say when it is full), or for no ``fd`` (a cache closed).

    Counts what an unprivileged writer may use (``f_bavail``): a daemon running
    as root leaves the filesystem's reserve to the system as well.
    """
    if fd is None:
        return None
    vfs = os.fstatvfs(fd)
    return vfs.f_bavail * vfs.f_frsize if vfs.f_blocks else None


def no_room(error: BaseException) -> bool:
    """Whether ``error`` is a write refused for want of room (space, inodes or quota)."""
    return isinstance(error, OSError) and error.errno in NO_ROOM


def room_wait(tries: int, first: float = ROOM_WAIT_FIRST) -> float:
    """Seconds to wait before try ``tries + 1`` of a fetch that found no room."""
    return min(first * 2.0**tries, ROOM_WAIT_MOST)
