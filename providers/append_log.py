"""Log files processes append to, kept from growing without end.

A detached process (the cache daemon, a mount server, an adoption) gets its
log as an fd opened for appending by whoever starts it. A machine up for
months starts thousands: so a log past ``LOG_CAP`` when it is opened is
renamed first to ``<name>.1`` (replacing the one before), and a new one is
begun. A process that has the old one open writes on into ``<name>.1``,
unless it follows its log (``FollowedLog``, as the cache daemon does): then
before each line it checks, and renames its log past the cap itself, or
opens again the one another process began.

Several processes may open one log at once. The one that renames it holds
a flock on it meanwhile and renames only the file it looked at, so an older
``.1`` is never replaced by a log just begun; one that finds the rename
under way, or done, appends as it finds. The open itself never fails for
the rename's sake.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Sequence
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


class FollowedLog(logging.Filter):
    """Keeps ``fds`` (stdout and stderr) appending to ``path`` across its renames.

    A long-lived process (the cache daemon) given its log by whoever started
    it would write on into ``<name>.1`` once the log is renamed, and never
    be renamed itself however much it writes. Added as a filter to its log
    handlers, this checks before each record: if ``path`` no longer names
    the file ``fds`` write to (another process renamed it), or that file is
    past ``cap``, ``open_log`` opens it again (renaming it first if past the
    cap) and the new fd takes the place of ``fds``. What cannot be opened
    again leaves the record where it went before: a log line never fails
    for the rename's sake. Thread-safe.
    """

    def __init__(self, path: Path, cap: int = LOG_CAP, fds: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.path, self.cap, self.fds = path, cap, tuple(fds)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock, contextlib.suppress(OSError):
            self.follow()
        return True

    def follow(self) -> None:
        """Open the log again if it was renamed or is past its cap. Blocking."""
        current = self.fds[-1]
        if same_file(current, self.path) and os.fstat(current).st_size <= self.cap:
            return
        fd = open_log(self.path, self.cap)
        try:
            for target in self.fds:
                os.dup2(fd, target)
        finally:
            os.close(fd)
