"""The address to bind or connect a Unix socket by, however deep its directory.

A Unix socket's address holds at most ``MAX_PATH`` bytes of path: a socket
in a deep directory (a long ``--cache_dir``, pytest's temporary directories)
cannot be bound or connected to by its path, and Python says only "AF_UNIX
path too long". ``unix_address`` gives the path itself when it fits, and
otherwise ``/proc/self/fd/N/NAME``, where N is an ``O_PATH`` descriptor of the
socket's directory held for as long as the address is used.

The kernel checks the same permissions either way: search on every directory
on the way when the descriptor is opened (by this process, just before the
bind or connect, as the long path's lookup would), search on the socket's
directory and write on the socket when the short path is looked up. So a
directory closed to other users stays closed to them; what makes such a
directory safe to trust is checked by the callers, as before.

Without /proc (a chroot, a mount namespace without it) a long path cannot
work: that is an OSError naming the path and the flag that sets its
directory, the one line a user reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

# sun_path is 108 bytes on Linux; Python wants the terminating NUL inside it.
MAX_PATH = 107


@contextlib.contextmanager
def unix_address(path: Path, flag: str) -> Iterator[str]:
    """An address for ``bind`` or ``connect`` to the socket at ``path``, valid inside the block.

    ``flag``: the command-line flag that sets ``path``'s directory, which the
    error names when a long path cannot be shortened (no /proc). Raises
    OSError as opening ``path``'s directory does (FileNotFoundError when it
    is not there, as a connect to a socket in it would).
    """
    name = os.fspath(path)
    if len(os.fsencode(name)) <= MAX_PATH:
        yield name
        return
    directory = os.open(os.path.dirname(name) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        through = f"/proc/self/fd/{directory}"
        short = f"{through}/{os.path.basename(name)}"
        if len(os.fsencode(short)) > MAX_PATH or not os.path.isdir(through):
            raise OSError(
                errno.ENAMETOOLONG,
                f"the socket {name} has a path longer than the {MAX_PATH} bytes a Unix socket "
                f"takes, and no /proc/self/fd to reach it by a shorter one: use a shorter {flag}",
            )
        yield short
    finally:
        os.close(directory)
