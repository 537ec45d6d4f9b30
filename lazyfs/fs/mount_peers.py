"""Who is at the other end of the mount server's socket, whether it lives where we do, and
the processes on either end: this one's umask, whether another runs or has exited.

Imports: the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time

from providers.reaping import pid_exists

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


_NAMESPACES = ("mnt", "pid", "user", "cgroup")


def elsewhere(pid: int) -> str | None:
    """What of ours process ``pid`` does not share: a namespace or the cgroup; None if all.

    A forked mount process mounts in its server's mount namespace and lives
    in its cgroup: a caller elsewhere (unshare, a systemd unit with private
    mounts, another container's cgroup) must not have its mounts made there.
    A process we cannot look at (pid 0: outside our pid namespace) is elsewhere.
    FileNotFoundError when it has ended (a zombie too) since it answered: no
    server is there, as for a socket no process listens on.
    """
    if pid <= 0:
        return "pid namespace"
    try:
        ours = [os.readlink(f"/proc/self/ns/{name}") for name in _NAMESPACES]
        with open("/proc/self/cgroup", "rb") as file:
            our_cgroup = file.read()
    except OSError:
        return "place we cannot see"
    try:
        for name, mine in zip(_NAMESPACES, ours, strict=True):
            if os.readlink(f"/proc/{pid}/ns/{name}") != mine:
                return f"{name} namespace"
        with open(f"/proc/{pid}/cgroup", "rb") as its:
            if its.read() != our_cgroup:
                return "cgroup"
    except FileNotFoundError:
        raise  # its entries are gone: it has ended
    except OSError:
        return "place we cannot see"
    return None


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """The peer's pid, uid and gid as the kernel saw them at connect."""
    pid, uid, gid = _CREDS.unpack(
        conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    )
    return pid, uid, gid


def umask() -> int:
    """This process's umask, read without changing it (other threads may be creating files)."""
    with (
        contextlib.suppress(OSError, ValueError, StopIteration),
        open("/proc/self/status") as status,
    ):
        line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs: reaped here if it is our child and ended (``exited``
    if it is not)."""
    if pid <= 0:
        raise ValueError(f"not a process: {pid}")
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        return not exited(pid)


def wait_ended(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` ended (``alive`` says not) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def exited(pid: int) -> bool:
    """Whether ``pid``, not our child, has exited: gone, or a zombie of one thread.

    A mount process, or a mount server, is started by a command it outlives:
    whoever adopts it reaps it, pid 1 or a subreaper, soon or never (an
    agent running as pid 1 in a container need not reap what it did not
    start). A zombie has run its last code and closed its files (each of its
    threads has exited), and its pid is not reused until it is reaped. One
    that signals cannot reach yet /proc does not show (hidepid, another pid
    namespace's /proc) counts as running.
    """
    if pid <= 0:
        raise ValueError(f"not a process: {pid}")
    if not pid_exists(pid):
        return True
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            fields = dict(
                line.split(b":", 1) for line in status.read().splitlines() if b":" in line
            )
    except OSError:
        # Reaped since, or hidden from this /proc (hidepid, another pid namespace's).
        return not pid_exists(pid)
    state, threads = fields.get(b"State", b"").split(), fields.get(b"Threads", b"").strip()
    return state[:1] in ([b"Z"], [b"X"]) and threads == b"1"
