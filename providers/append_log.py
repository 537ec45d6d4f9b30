"""Log files processes append to, kept from growing without end.

A detached process (the cache daemon, a mount server, an adoption) gets its
log as an fd opened for appending by whoever starts it. A machine up for
months starts thousands: so a log past ``LOG_CAP`` when it is opened is
renamed first to ``<name>.1`` (replacing the one before), and a new one is
begun. A process that has the old one open writes on into ``<name>.1``.

Several processes may open one log at once. The one that renames it holds
a flock on it meanwhile and renames only the file it looked at, so an older
``.1`` is never replaced by a log just begun; one that finds the rename
under way, or done, appends as it finds. The open itself never fails for
the rename's sake.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from providers.fslock import same_file

LOG_CAP = 1 << 20
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def open_log(path: Path, cap: int = LOG_CAP) -> int:
    """An fd appending to ``path`` (made ``0600``: closed to others, as logs name
    images and paths), renamed to ``<name>.1`` first if past ``cap`` bytes."""
    fd = os.open(path, _FLAGS, 0o600)
    try:
        if os.fstat(fd).st_size <= cap:
            return fd
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd  # another process renames it now: these lines go to its .1
    except BaseException:
        os.close(fd)
        raise
    try:
        # Under the flock: another process may have renamed it since we opened it.
        if same_file(fd, path):
            os.replace(path, path.with_name(f"{path.name}.1"))
    except OSError:
        return fd  # not renamed (a read-only directory, say): appended to as before
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    return os.open(path, _FLAGS, 0o600)
