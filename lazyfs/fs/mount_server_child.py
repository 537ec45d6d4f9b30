"""A mount process forked by the mount server: made to look and behave as an exec'd one.

``fork_mount`` forks; the child leaves the server behind (its socket, its
signal handlers, its logging, its directory, umask and environment) and
takes the caller's, in a session of its own, then runs
``lazyfs.fs.mount_main.main`` with the arguments the caller sent and exits
with its status, never returning into the server's loop.

Its command line (``/proc/PID/cmdline``, what ``ps`` shows and what
``lazyfs.fs.mount.unmount`` checks before it signals a pid) is written over
the server's to read as the exec'd mount process's would: the server was
started with room for it (``TITLE_ROOM``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence

MOUNT_MODULE = "lazyfs.fs.mount_main"


def fork_mount(
    args: Sequence[str],
    env: Mapping[str, str],
    umask: int,
    *,
    ready_fd: int,
    log_fd: int,
    cwd_fd: int,
    close: Iterable[socket.socket],
) -> int:
    """Fork a mount process of ``args``; its pid, in the server.

    The child closes the server's sockets in ``close``, gets ``log_fd`` as
    stdout and stderr, /dev/null as stdin, ``cwd_fd`` as its working
    directory, ``umask`` and exactly ``env``, and ``ready_fd`` as
    ``--ready-fd``. The server closes its copies of the descriptors.
    """
    # Nothing buffered in the server may be written twice, once by the child.
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        for sock in close:
            sock.close()
        argv = [*args, "--ready-fd", str(ready_fd)]
        _leave_server(env, umask, log_fd=log_fd, cwd_fd=cwd_fd)
        set_title([sys.executable, "-P", "-m", MOUNT_MODULE, *argv])
        sys.argv = [MOUNT_MODULE, *argv]
        from lazyfs.fs import mount_main

        status = mount_main.main(argv)
    except SystemExit as done:  # the argument parser's verdict on bad arguments
        code = done.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        # Never back into the server's loop, its finally clauses or atexit.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(status)


def _leave_server(env: Mapping[str, str], umask: int, *, log_fd: int, cwd_fd: int) -> None:
    os.setsid()  # detached, as an exec'd one: no signal of the server's session reaches it
    # The handlers an exec'd Python starts with: SIGCHLD by default (the
    # server ignores it, and fusermount3 must be waited for), SIGINT raising
    # KeyboardInterrupt; no signal blocked.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.fchdir(cwd_fd)
    os.close(cwd_fd)
    os.umask(umask)
    os.environ.clear()
    os.environ.update(env)
    # The mount process configures logging itself, as an exec'd one would.
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)


def set_title(argv: Sequence[str]) -> None:
    """Write ``argv`` over this process's command line, cut to the room it has.

    The kernel reads ``/proc/PID/cmdline`` from the memory the arguments
    were passed in (``arg_start``..``arg_end`` in ``/proc/PID/stat``); it
    is ours to write. The rest of the room is zeroed, so it reads as empty
    arguments.
    """
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    # Fields 48 and 49 of proc(5); the split dropped the first two.
    start, end = int(fields[45]), int(fields[46])
    room = end - start
    data = b"\0".join(os.fsencode(arg) for arg in argv)[: room - 1]
    ctypes.memmove(start, data + bytes(room - len(data)), room)
