"""The mount server: ``python -m lazyfs.fs.mount_server``, one per store, forking mount processes.

Started detached by the first mount that finds none (``start_mount`` in
``lazyfs.fs.mount_server_client``, which also describes the socket, its
directory and the requests). At start it computes its ``code_key`` (before
importing anything it will serve, so it never claims newer code than it
holds), imports everything a mount process runs (``PRELOAD``), freezes
those objects out of the garbage collector's reach (so collections in the
children do not touch, and unshare, the pages they live on), then listens.

It runs no trio and no FUSE: pyfuse3 and trio are not safe to fork once
they ran, so the server only imports them and serves its socket with a
plain blocking accept loop, one request at a time. Each request:

- from a peer that is neither its own uid nor root (SO_PEERCRED): refused;
- ``mount`` with another ``code_key``, or with a hard resource limit above
  the server's own (its child could not raise its own to it): answered
  ``stale``; the server removes its socket first (the next caller starts a
  new server) and exits;
- ``mount``: checked (a list of strings without ``--ready-fd``, which it
  sets itself; an environment of strings; a umask; resource limits; three
  descriptors), then handed to the spare, a child forked before the request
  came (or, if there is none, to a child forked now): the child becomes the
  mount process (``mount_server_child``), the server forks the next spare
  and answers the mount process's pid;
- ``stop``: it exits.

It gives up if it is not listening within ``--start-timeout`` seconds (an
import stuck on a dead network path, say): else it would hold ``start.lock``
for good, and every later mount would be exec'd or wait for it in vain.
It exits after ``--idle`` seconds without a request too, and within
``LOOK_EVERY`` seconds of its directory's going away (its store deleted,
say) or being replaced by another at its path: none of them would ever be
asked for a mount again (``lazyfs.cache.pinned_dir``). Its children are
never its business again: SIGCHLD is ignored so the kernel reaps them, they
run in sessions of their own, and they outlive it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import math
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lazyfs.cache.pinned_dir import PinnedDir
from lazyfs.fs import mount_server_child, mount_wire
from lazyfs.fs.mount_peers import peer_credentials
from lazyfs.fs.mount_server_check import FDS, check
from lazyfs.fs.mount_server_check import Refused as Refused  # callers ask for it here too
from lazyfs.fs.mount_server_child import MountRequest
from lazyfs.fs.mount_server_client import SOCKET_NAME, START_TIMEOUT, socket_path
from lazyfs.fs.mount_server_wire import LENGTH, MAX_MESSAGE, code_key, encode, read_exactly
from providers import rlimits, shared_libs, untrusted_json

# What a mount process imports, some of it only on the way (writable mounts,
# remote and eStargz layers, limits other than the defaults, --debug): all of
# it is shared this way, and none of it is imported again by a child.
PRELOAD = (
    "pyfuse3",
    "trio",
    "lazyfs.fs.mount_main",
    "lazyfs.fs.upper",
    "lazyfs.fs.upper_load",
    "lazyfs.fs.writable",
    "lazyfs.fs.writable_no_open",
    "lazyfs.fs.debug",
    "lazyfs.fs.predict",
    "lazyfs.fs.predict_toc",
    "lazyfs.fs.predict_libs",
    "lazyfs.cache.client",
    "lazyfs.cache.messages",
    "lazyfs.index.stored",
    "lazyfs.index.stored_remote",
    "lazyfs.index.estargz_index",
    "lazyfs.index.estargz_store",
    "lazyfs.blobs.estargz_reader",
    "providers.tar_stream",
)
IDLE_TIMEOUT = 3600.0
REQUEST_TIMEOUT = 10.0
SPARE_EXIT_TIMEOUT = 5.0
_check = check  # where it was, as callers still ask for it
LOOK_EVERY = 2.0  # seconds between looks, while idle, whether its directory is still there


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=__spec__.name if __spec__ else "mount_server")
    parser.add_argument("--dir", type=Path, required=True, help="the server's private directory")
    parser.add_argument("--room", default="", help="room for the children's command lines")
    parser.add_argument("--idle", type=float, default=IDLE_TIMEOUT, help="seconds, then exit")
    parser.add_argument(
        "--first-idle", type=float, help="seconds to the first request, then exit (default --idle)"
    )
    parser.add_argument(
        "--start-timeout", type=int, default=math.ceil(START_TIMEOUT), help="seconds to listen in"
    )
    parser.add_argument(
        "--start-lock-fd", type=int, help="the starter's start.lock, held until this listens"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # Killed by the kernel (SIGALRM's default action) if not listening in
    # time: that ends even a wait in an uninterruptible read, where a handler
    # of ours would never run, and the lock goes with the process.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(args.start_timeout, 1))
    _close_inherited(keep=args.start_lock_fd)
    # Opened first: a relative --dir is relative to the starter's directory.
    home = PinnedDir.opened(args.dir)
    os.chdir("/")  # pin no caller's directory
    # It serves every command of the store for up to an hour: not under its starter's
    # lowered limits (a ``ulimit -t`` would end it); each child takes its caller's.
    rlimits.take_the_machines()
    key = code_key()
    # Before trio is preloaded: its import would run ``ldconfig -p`` (providers.shared_libs).
    shared_libs.install()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as error:  # a mount imports it itself, then
            _say(f"cannot preload {name}: {error}")
    mount_wire.warm_up()
    gc.collect()
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    signal.signal(signal.SIGTERM, _exit_on_signal)
    server = _listen(home, key)
    signal.alarm(0)
    if args.start_lock_fd is not None:
        os.close(args.start_lock_fd)  # listening: callers may connect, none starts another
    _say(f"serving in {args.dir}")
    try:
        server.spare = _spare(server)
        _serve(server, args.idle, args.idle if args.first_idle is None else args.first_idle)
    except SystemExit:
        pass
    finally:
        server.forget_socket()
        server.listener.close()
        server.drop_spare()
    _say("exiting")
    return 0


def _close_inherited(keep: int | None) -> None:
    """Close what the starter let this inherit, but ``keep``: it would hold it open for hours.

    A caller's ready pipe held here would keep its mount's EOF from coming.
    Only inheritable ones: what this process opened itself is close-on-exec.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3 or fd == keep:
            continue
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            if os.get_inheritable(fd):
                os.close(fd)


def _exit_on_signal(number: int, frame: object) -> None:
    _say(f"{signal.Signals(number).name}: exiting")
    raise SystemExit(0)


@dataclasses.dataclass
class _Server:
    listener: socket.socket
    home: PinnedDir  # its directory, and the descriptor it opened at start
    inode: int  # of the socket file we bound
    key: str
    # The child that takes the next mount (``mount_server_child.fork_spare``):
    # its pid and our end of its socket, whose closing ends it.
    spare: tuple[int, socket.socket] | None = None
    mounts: int = 0  # mount processes started

    def drop_spare(self) -> None:
        """End the spare (it exits when its socket closes) and wait a moment until it has.

        So a server that exits leaves no process behind it. Waited for
        through a pidfd: the kernel reaps the spare (SIGCHLD is ignored),
        and its pid may be another process's by then.
        """
        if self.spare is None:
            return
        pid, sock = self.spare
        self.spare = None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # gone already
            pidfd = -1
        sock.close()
        if pidfd >= 0:
            try:
                select.select([pidfd], [], [], SPARE_EXIT_TIMEOUT)
            finally:
                os.close(pidfd)

    def forget_socket(self) -> None:
        """Remove the socket file if it still is ours (a successor may have replaced it)."""
        path = socket_path(self.home.fd)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self.inode:
                os.unlink(path)


def _listen(home: PinnedDir, key: str) -> _Server:
    """Listen on the socket, replacing a dead server's in one rename."""
    directory = home.fd
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    temporary = f"/proc/self/fd/{directory}/.{SOCKET_NAME}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    # Its directory is closed to others already; the socket is ours alone too.
    old = os.umask(0o077)
    try:
        listener.bind(temporary)
    finally:
        os.umask(old)
    inode = os.stat(temporary).st_ino
    listener.listen(64)
    os.rename(temporary, socket_path(directory))
    return _Server(listener, home, inode, key)


def _serve(server: _Server, idle: float, first: float) -> None:
    """Requests until one says stop, or none came for ``idle`` seconds (``first`` until the
    first mount: a connection that asks for none, as ``server_pid``'s, does not count), or its
    directory is gone (``PinnedDir``): a store deleted or replaced is never served again."""
    while True:
        conn = _accept(server, idle if server.mounts else first)
        if conn is None:
            return
        with conn:
            if not _handle(conn, server):
                return


def _accept(server: _Server, wait: float) -> socket.socket | None:
    """The next connection; None after ``wait`` seconds without one, or once the directory is
    gone, which is looked at every ``LOOK_EVERY`` seconds meanwhile."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        server.listener.settimeout(min(left, LOOK_EVERY))
        try:
            return server.listener.accept()[0]
        except TimeoutError:
            pass
        if why := server.home.gone():
            # Its socket went with it: nothing finds this server any more.
            _say(f"{why}: exiting")
            return None
    _say(f"idle for {wait:g}s")
    return None


def _handle(conn: socket.socket, server: _Server) -> bool:
    """Serve one request; False when the server is to exit."""
    conn.settimeout(REQUEST_TIMEOUT)
    fds: list[int] = []
    try:
        pid, uid, _ = peer_credentials(conn)
        if uid not in (os.getuid(), 0):
            _say(f"refused pid {pid}: uid {uid}")
            raise Refused(f"uid {uid} may not use this mount server")
        message = _receive(conn, fds)
        if message.get("op") == "stop":
            _say(f"stopped by pid {pid}")
            _answer(conn, {"stopped": os.getpid()})
            return False
        if message.get("key") != server.key:
            return _make_way(conn, server, f"pid {pid} runs other code")
        request = check(message, fds)
        if higher := rlimits.above_own(request.limits):
            # The child could not take them (raising a hard limit takes
            # CAP_SYS_RESOURCE): a server the caller starts has them.
            return _make_way(conn, server, f"pid {pid} has higher limits: {', '.join(higher)}")
        child = _start_child(server, request, fds, conn)
        server.mounts += 1
        # The child has its own copies. Ours go before the next spare is
        # forked, so it never holds them: a ready pipe's write end held
        # there would keep that mount's caller from seeing it fail.
        _close_all(fds)
        # The next spare before the answer: the caller waits for its mount's
        # ready line, which the child writes meanwhile, not for this answer;
        # and whoever is answered finds the server as it will stay.
        server.spare = _spare(server, conn)
        _answer(conn, {"pid": child})
    except Refused as refused:
        _answer(conn, {"error": str(refused)})
    except EOFError:
        pass  # a caller that only looked for us (``server_pid``), or gave up
    except (OSError, ValueError) as error:
        _say(f"a request failed: {error}")
        _answer(conn, {"error": f"{type(error).__name__}: {error}"})
    finally:
        _close_all(fds)
    return True


def _make_way(conn: socket.socket, server: _Server, why: str) -> bool:
    """Answer ``stale`` and say the server is to exit: the caller starts a new one."""
    _say(f"{why}: exiting for a new server")
    # Before answering: the caller's next connect must start a new server.
    server.forget_socket()
    _answer(conn, {"stale": True})
    return False


def _close_all(fds: list[int]) -> None:
    """Close ``fds`` and forget them."""
    while fds:
        os.close(fds.pop())


def _start_child(
    server: _Server, request: MountRequest, fds: list[int], conn: socket.socket
) -> int:
    """The mount process of ``request``: the spare, given it, or else forked now."""
    spare, server.spare = server.spare, None
    if spare is not None:
        pid, sock = spare
        try:
            with sock:
                message = dataclasses.asdict(request)
                mount_server_child.hand_over(sock, encode(message), fds)
            return pid
        except OSError as error:  # it died (killed?): the kernel reaps it
            _say(f"spare {pid} is gone ({error}): forking the mount")
    return mount_server_child.fork_mount(request, fds, close=(conn, server.listener))


def _spare(server: _Server, conn: socket.socket | None = None) -> tuple[int, socket.socket] | None:
    """A new spare (``mount_server_child.fork_spare``); None if it cannot be forked.

    ``conn``: the request being served, which the spare must not keep.
    """
    close = (server.listener,) if conn is None else (server.listener, conn)
    try:
        return mount_server_child.fork_spare(close=close)
    except OSError as error:  # the next mount is forked on request instead
        _say(f"cannot fork a spare: {error}")
        return None


def _receive(conn: socket.socket, fds: list[int]) -> dict[str, Any]:
    """The request on ``conn``; the descriptors that came with it go into ``fds``."""
    data, received, flags, _ = socket.recv_fds(conn, 65536, FDS + 1)
    fds.extend(received)  # closed by the caller whatever happens next
    for fd in received:
        os.set_inheritable(fd, False)
    if flags & socket.MSG_CTRUNC:
        raise Refused("too many descriptors")
    head = read_exactly(conn, LENGTH.size, data[: LENGTH.size])
    (length,) = LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise Refused(f"a request of {length} bytes")
    message = untrusted_json.loads(read_exactly(conn, length, data[LENGTH.size :]))
    if not isinstance(message, dict):
        raise Refused("a request that is not an object")
    return message


def _answer(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(encode(message))


def _say(line: str) -> None:
    print(f"lazyfs-mount-server[{os.getpid()}]: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
