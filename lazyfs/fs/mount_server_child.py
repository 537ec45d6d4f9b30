"""A mount process forked by the mount server: made to look and behave as an exec'd one.

``fork_spare`` forks a spare ahead of the request and ``hand_over`` gives
it the request; ``fork_mount`` forks on request (no spare, or it died).
The child leaves the server behind (its socket, its signal handlers, its
logging, its directory, umask, resource limits and environment) and takes
the caller's, in a session of its own, then runs
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
import json
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from lazyfs.fs.mount_server_wire import LENGTH, read_exactly
from providers import rlimits

MOUNT_MODULE = "lazyfs.fs.mount_main"
FDS = 3  # the ready pipe, the log, the working directory


@dataclass(frozen=True)
class MountRequest:
    """A checked mount request (``mount_server._check``): what the child becomes."""

    args: list[str]
    env: dict[str, str]
    umask: int
    limits: dict[str, list[int]]  # ``providers.rlimits.current`` of the caller


def fork_mount(request: MountRequest, fds: Sequence[int], close: Iterable[socket.socket]) -> int:
    """Fork the mount process of ``request``; its pid, in the server.

    ``fds`` are the request's descriptors (``FDS``): its ready pipe, its
    log and its working directory. The child closes the server's sockets
    in ``close`` and becomes the mount process (``_become_mount``). The
    server closes its copies of the descriptors.
    """
    pid = _fork()
    if pid:
        return pid
    for sock in close:
        sock.close()
    _leave_session()
    _become_mount(request, fds)


def fork_spare(close: Iterable[socket.socket]) -> tuple[int, socket.socket]:
    """Fork a spare: a child that waits to become the next mount process; its pid and socket.

    Forking a mount process on request costs the request the fork (the
    server's page tables copied) and the child's first faults on what it
    shares with the server, some milliseconds of every start. A spare has
    paid both before the request comes: ``hand_over`` gives it the request
    and its descriptors, and it becomes the mount process as ``fork_mount``'s
    child does. It closes the server's sockets in ``close`` (the server
    holds no other request's descriptors when it forks one), and exits when
    the server closes its end of the spare's socket (the server stops, or
    dies) or sends anything it cannot take.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    pid = _fork()
    if pid:
        theirs.close()
        return pid, ours
    status = 0
    try:
        ours.close()
        for sock in close:
            sock.close()
        # Before the request, not on its way: its own session, and the
        # handlers of a process that has none of the server's (a signal ends it).
        _leave_session()
        request = _take_request(theirs)
    except BaseException:
        traceback.print_exc()
        status = 1
    else:
        if request is not None:
            _become_mount(*request)
    os._exit(status)


def hand_over(spare: socket.socket, message: bytes, fds: Sequence[int]) -> None:
    """Send a checked mount request (``encode``d args, env, umask) and its three descriptors.

    Raises OSError when the spare is gone: the server then forks the mount instead.
    """
    sent = socket.send_fds(spare, [message], list(fds))
    if sent < len(message):
        spare.sendall(message[sent:])


def _take_request(conn: socket.socket) -> tuple[MountRequest, list[int]] | None:
    """The request the server hands over; None when it closed without one."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, FDS)
    if not data:
        return None
    head = read_exactly(conn, LENGTH.size, data[: LENGTH.size])
    (length,) = LENGTH.unpack(head)
    message = json.loads(read_exactly(conn, length, data[LENGTH.size :]))
    conn.close()
    # The server checked it (``mount_server._check``) before handing it over.
    if len(fds) != FDS:
        raise ValueError(f"{len(fds)} descriptors handed over, not {FDS}")
    request = MountRequest(**message)
    return request, list(fds)


def _fork() -> int:
    # Nothing buffered in the server may be written twice, once by the child.
    sys.stdout.flush()
    sys.stderr.flush()
    return os.fork()


def _become_mount(request: MountRequest, fds: Sequence[int]) -> NoReturn:
    """In a child of the server, out of its session: run the mount process, exit with its status.

    The child gets the log (``fds[1]``) as stdout and stderr, /dev/null as
    stdin, ``fds[2]`` as its working directory, the request's umask and
    exactly its environment, and the ready pipe (``fds[0]``) as ``--ready-fd``.
    """
    status = 1
    try:
        ready_fd, log_fd, cwd_fd = fds
        argv = [*request.args, "--ready-fd", str(ready_fd)]
        _leave_server(request, log_fd=log_fd, cwd_fd=cwd_fd)
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


def _leave_session() -> None:
    """What a child leaves of the server whatever the request: a spare does it before one comes."""
    os.setsid()  # detached, as an exec'd one: no signal of the server's session reaches it
    # The handlers an exec'd Python starts with: SIGCHLD by default (the
    # server ignores it, and fusermount3 must be waited for), SIGINT raising
    # KeyboardInterrupt; no signal blocked.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # The mount process configures logging itself, as an exec'd one would.
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)


def _leave_server(request: MountRequest, *, log_fd: int, cwd_fd: int) -> None:
    """Take the request's descriptors, directory, umask, limits and environment for the server's."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.fchdir(cwd_fd)
    os.close(cwd_fd)
    os.umask(request.umask)
    if refused := rlimits.apply(request.limits):  # the server checked it could: never here
        print(f"lazyfs-mount: the caller's limits not taken: {', '.join(refused)}", file=sys.stderr)
    os.environ.clear()
    os.environ.update(request.env)


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
