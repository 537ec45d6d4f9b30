"""Asking the mount server to start a mount process, and starting the server when none runs.

A mount process exec'd afresh spends most of its start importing Python. The
mount server (``python -m lazyfs.fs.mount_server``, see there) has imported
all of it once and forks one child per mount, so a mount starts without
importing and every mount shares the server's code pages and modules
copy-on-write.

There is one server per store, in ``STORE/mount-server/`` (``0700``, as the
store): its socket ``mount.sock``, ``start.lock`` (one starter at a time,
across processes) and ``server.log``. ``start_mount`` connects, checks that
the server runs as this user (SO_PEERCRED), and sends the mount's arguments,
environment, umask and resource limits with the file descriptors the child
needs (SCM_RIGHTS: the ready pipe's write end, the log, the working
directory); the server forks, and answers the child's pid. The child is then
what an exec'd mount process is to its caller: same ready pipe, same
``/proc/PID/cmdline``, same signals and limits (``lazyfs.fs.mount``).

The server serves only the code a mount would exec now: each request carries
``code_key()`` (the Python, the import path, the lazyfs and providers source
files by path, size and mtime); a server with another, or whose hard limits
are below the caller's (``providers.rlimits``), answers ``stale`` and exits,
and a new one is started. A socket nobody answers on is a dead
server's: the new server replaces it. Killing the server takes no mount with
it: its children are in sessions of their own and never talk to it again.

``LAZYFS_MOUNT_SERVER``: ``0`` never uses the server, ``1`` always does
(BackendError if it cannot), unset or anything else uses it when it can:
a mount that finds none starts one and is exec'd meanwhile, not waiting
for the server's imports, unless its command started the server ahead.

Light: the standard library and providers; the mount API calls it. Blocking.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lazyfs.fs import mount_peers as peers
from lazyfs.fs.mount_server_wire import LENGTH, MAX_MESSAGE, encode, read_exactly
from lazyfs.fs.mount_server_wire import code_key as code_key  # callers ask it here too
from providers import rlimits
from providers.append_log import open_log
from providers.errors import BackendError, UsageError
from providers.fslock import exclusive_lock_until
from providers.private_dir import private_dir
from providers.reaping import SPAWN_DEFAULTS, reap_later

ENV = "LAZYFS_MOUNT_SERVER"
DIR_NAME = "mount-server"
SOCKET_NAME = "mount.sock"
LOCK_NAME = "start.lock"
LOG_NAME = "server.log"
SERVER_MODULE = "lazyfs.fs.mount_server"
START_TIMEOUT = 30.0
AHEAD_WAIT = 3.0  # seconds a mount waits for the server its command started ahead
AHEAD_IDLE = 60.0  # seconds that server waits for its first request, then exits
REPLY_TIMEOUT = 30.0
TITLE_ROOM = 8192  # bytes of the server's command line a child writes its own over
_LOCK_FD = 3  # where a server started beside a mount gets start.lock


class Unreachable(Exception):
    """No server took the request: nothing was started, the caller may exec instead."""


class _Starting(Unreachable):
    """Another caller's server is starting (it holds ``start.lock`` until it listens)."""


_AHEAD: set[Path] = set()  # servers this process started ahead, not yet asked for a mount


def wanted(environ: Mapping[str, str] = os.environ) -> bool | None:
    """Whether mounts start through the server: True forced, False never, None when it can."""
    value = environ.get(ENV, "")
    return {"0": False, "1": True}.get(value)


def server_dir(store: Path) -> Path:
    """The directory of the mount server for mounts of the store at ``store``."""
    return store / DIR_NAME


def start_mount(
    directory: Path,
    args: list[str],
    *,
    ready_fd: int,
    log_fd: int,
    key: str | None = None,
    wait: bool = True,
    start: bool = True,
) -> int:
    """Have the server of ``directory`` fork a mount process of ``args``; its pid.

    ``args`` are ``lazyfs.fs.mount_main``'s arguments without ``--ready-fd``:
    the child gets ``ready_fd`` for it, ``log_fd`` as stdout and stderr,
    /dev/null as stdin, this process's working directory, umask, limits and
    environment. The server is started when none answers; with ``wait``
    false the caller does not wait for it to come up (Unreachable: exec this
    one, the next mounts find the server); with ``start`` false none is
    started (Unreachable when none answers). Not waiting, one this process
    started ahead (``start_ahead``) is waited for all the same, ``AHEAD_WAIT``.

    Raises Unreachable when no server took the request (none could be
    started, each answered with other code than ``key``, by default
    ``code_key()``, or it refused and said why); BackendError when the
    request was sent but no answer came back: a child may exist then, and
    ends when the caller closes the ready pipe's read end (its first answer
    fails), so it must not be retried.
    """
    if not start and directory not in _AHEAD and not (directory / SOCKET_NAME).exists():
        raise Unreachable("no mount server runs, and this mount starts none")  # no code_key()
    key = code_key() if key is None else key
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        request: dict[str, Any] = {"op": "mount", "key": key, "args": args}
        request.update(env=dict(os.environ), umask=peers.umask(), limits=rlimits.current())
        stale = False  # a stale server exits on our request; its successor serves
        for _ in range(2):
            with _connected(directory, wait=wait, start=start, stale=stale) as conn:
                _send(conn, request, [ready_fd, log_fd, cwd])
                reply = _reply(conn)
            if stale := bool(reply.get("stale")):
                continue
            if isinstance(reply.get("pid"), int):
                return int(reply["pid"])
            # It said why it started nothing (a refusal, a failed fork).
            raise Unreachable(f"the mount server refused: {reply.get('error', reply)}")
    finally:
        os.close(cwd)
    raise Unreachable("the mount server kept answering stale (other code, or lower limits)")


def server_pid(directory: Path) -> int | None:
    """The pid of the server answering in ``directory``, None if none does."""
    with contextlib.suppress(OSError, Unreachable):
        conn = _connect(directory)
        if conn is not None:
            with conn:
                return peers.peer_credentials(conn)[0]
    return None


def stop_server(directory: Path, timeout: float = START_TIMEOUT) -> int | None:
    """Ask the server of ``directory`` to exit and wait until it has; its pid, None if none ran.

    The mounts it started keep running. Raises BackendError if it stays.
    """
    try:
        conn = _connect(directory)
    except Unreachable:
        return None
    if conn is None:
        return None
    with conn:
        pid = peers.peer_credentials(conn)[0]
        # A server exiting anyway (idle, replaced) may hang up on us: wait all the same.
        with contextlib.suppress(Unreachable, BackendError):
            _send(conn, {"op": "stop", "key": ""}, [])
            _reply(conn)
    if not peers.wait_ended(pid, timeout):
        raise BackendError(f"the mount server {pid} did not stop within {timeout:g}s")
    return pid


def socket_path(directory_fd: int) -> str:
    """The socket's path through an open descriptor of its directory: short whatever the
    store's path (at most 108 bytes), and not redirected by renaming the directory."""
    return f"/proc/self/fd/{directory_fd}/{SOCKET_NAME}"


@contextlib.contextmanager
def _connected(
    directory: Path, *, wait: bool = True, start: bool = True, stale: bool = False
) -> Iterator[socket.socket]:
    """A connection to the server of ``directory``, starting one if none answers (and ``start``).

    Not ``wait``ing, a server started here or starting already (``stale``: as
    the last to answer, of other code, exits) is not waited for (Unreachable:
    the mount is exec'd beside it, not delayed by the server's imports),
    unless this process started it ahead (``start_ahead``).
    """
    try:
        # Checked before anything in it is trusted: ours, closed to other users.
        private_dir(directory)
    except (UsageError, OSError) as error:
        raise Unreachable(str(error)) from None
    ahead = directory in _AHEAD and not wait  # waiting, a mount waits its full time anyway
    _AHEAD.discard(directory)
    conn = _connect(directory)
    if conn is None and ahead:
        conn = _started_ahead(directory)
    if conn is None and not start:
        raise Unreachable("no mount server runs, and this mount starts none")
    if conn is None and not wait:
        conn = _start_beside(directory)
        if conn is None:
            ran = "the mount server ran other lazyfs code" if stale else "no mount server ran"
            raise Unreachable(f"{ran}; one is starting for the next mounts")
    if conn is None:
        deadline = time.monotonic() + START_TIMEOUT
        try:
            with exclusive_lock_until(directory / LOCK_NAME, deadline, Unreachable, pause=0.02):
                conn = _connect(directory)  # another caller may have started it meanwhile
                if conn is None:
                    conn = _start(directory, deadline)
        except OSError as error:  # the lock file cannot be had
            raise Unreachable(f"{directory / LOCK_NAME}: {error.strerror}") from None
    with conn:
        yield conn


def _connect(directory: Path) -> socket.socket | None:
    """A connection to the server of ``directory``; None if none listens there."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise Unreachable(f"{directory}: {error.strerror}") from None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.connect(socket_path(fd))
        pid, uid, _ = peers.peer_credentials(conn)
        if uid != os.geteuid():
            # Never hand our descriptors and environment to another user's process.
            raise Unreachable(f"the mount server in {directory} runs as uid {uid}, not as us")
        elsewhere = peers.elsewhere(pid)
        if elsewhere:
            # Its child would mount where the server lives, not where we asked.
            raise Unreachable(f"the mount server in {directory} runs in another {elsewhere}")
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None  # none started, or a dead server's socket: a new server replaces it
    except OSError as error:
        conn.close()
        raise Unreachable(f"cannot reach the mount server in {directory}: {error}") from None
    except BaseException:
        conn.close()
        raise
    finally:
        os.close(fd)
    return conn


def _start_beside(directory: Path, *, ahead: bool = False) -> socket.socket | None:
    """Start a server in ``directory`` unless one is starting; a connection if one listens now.

    None once this call started one (``ahead``: kept in _AHEAD); _Starting if another's is. The
    server started holds ``start.lock`` until it listens (``--start-lock-fd``),
    so callers meanwhile neither start another nor wait for it.
    """
    try:
        lock = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise Unreachable(f"{directory / LOCK_NAME}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Starting("the mount server is starting; not waiting for it") from None
        conn = _connect(directory)  # it may have come up meanwhile
        if conn is not None:
            return conn
        reap_later(_spawn(directory, lock_fd=lock, first_idle=AHEAD_IDLE if ahead else None))
        if ahead:
            _AHEAD.add(directory)
    finally:
        os.close(lock)  # the server's copy holds the lock on
    return None


def start_ahead(directory: Path) -> None:
    """Start the server of ``directory`` now, for a mount this process asks for in a moment.

    It imports while the caller resolves its image; that mount waits for it and is
    forked, not exec'd. None is started when one listens or is starting. Unasked
    for ``AHEAD_IDLE`` seconds (the command failed), it exits. Raises Unreachable
    when none could be started.
    """
    try:
        private_dir(directory)
    except (UsageError, OSError) as error:
        raise Unreachable(str(error)) from None
    with contextlib.suppress(_Starting):
        conn = _start_beside(directory, ahead=True)
        if conn is not None:
            conn.close()


def _started_ahead(directory: Path) -> socket.socket:
    """A connection to the server this process started ahead, once it listens: within
    ``AHEAD_WAIT`` (one that hangs at start is left to its own alarm), else Unreachable."""
    deadline = time.monotonic() + AHEAD_WAIT
    try:
        with exclusive_lock_until(directory / LOCK_NAME, deadline, Unreachable, pause=0.005):
            conn = _connect(directory)
    except OSError as error:
        raise Unreachable(f"{directory / LOCK_NAME}: {error.strerror}") from None
    if conn is None:
        raise Unreachable(f"the mount server started ahead exited: {_last_line(directory)}")
    return conn


def _spawn(directory: Path, *, lock_fd: int | None = None, first_idle: float | None = None) -> int:
    """Start a server in ``directory``, detached; its pid. It holds ``lock_fd`` till it listens."""
    log_fd = open_log(directory / LOG_NAME)  # renamed to .1 once past its cap
    try:
        # The room argument: the children write their own command line over it.
        argv = [sys.executable, "-P", "-m", SERVER_MODULE, "--dir", str(directory)]
        argv += ["--room", " " * TITLE_ROOM]
        if first_idle is not None:
            argv += ["--first-idle", str(first_idle)]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ]
        if lock_fd is not None:
            # The same open file, so the same lock: it is released when the server closes it.
            actions.append((os.POSIX_SPAWN_DUP2, lock_fd, _LOCK_FD))
            argv += ["--start-lock-fd", str(_LOCK_FD)]
        return os.posix_spawn(
            sys.executable,
            argv,
            os.environ,
            file_actions=actions,
            setsid=True,  # detached: no signal of the caller's terminal reaches it
            setsigdef=SPAWN_DEFAULTS,
        )
    except OSError as error:
        raise Unreachable(f"cannot start the mount server: {error}") from None
    finally:
        os.close(log_fd)


def _start(directory: Path, deadline: float) -> socket.socket:
    """Start a server in ``directory`` and connect to it once it listens."""
    pid = _spawn(directory)
    pause = 0.005
    while True:
        conn = _connect(directory)
        if conn is not None:
            break
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            raise Unreachable(f"the mount server exited at start: {_last_line(directory)}")
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Unreachable(f"the mount server did not listen within {START_TIMEOUT:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
    reap_later(pid)
    return conn


def _send(conn: socket.socket, message: Mapping[str, Any], fds: list[int]) -> None:
    frame = encode(message)
    conn.settimeout(REPLY_TIMEOUT)
    try:
        # The descriptors ride with the first bytes; the rest follows plainly.
        sent = socket.send_fds(conn, [frame], fds)
        # No empty send once all is out: the server may have closed (EPIPE).
        if sent < len(frame):
            conn.sendall(frame[sent:])
    except OSError as error:
        # A server that closed before reading took nothing: no child exists.
        raise Unreachable(f"the mount server hung up: {error}") from None


def _reply(conn: socket.socket) -> dict[str, Any]:
    try:
        header = read_exactly(conn, LENGTH.size, b"")
        (length,) = LENGTH.unpack(header)
        if length > MAX_MESSAGE:
            raise ValueError(f"an answer of {length} bytes")
        reply = json.loads(read_exactly(conn, length, b""))
        if not isinstance(reply, dict):
            raise ValueError("an answer that is not an object")
        return reply
    except (OSError, ValueError, EOFError) as error:
        raise BackendError(f"the mount server gave no answer: {error or 'it hung up'}") from None


def _last_line(directory: Path) -> str:
    try:
        lines = (directory / LOG_NAME).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "nothing logged"
