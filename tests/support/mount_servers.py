"""The two ways a mount process starts (``lazyfs.fs.mount_server_client``), for tests of each.

``exec``: ``python -m lazyfs.fs.mount_main``, a child of the caller.
``server``: forked by the store's mount server. The suite runs ``exec``
unless a test asks (``tests/conftest.py``): a server per test's store would
outlive its test. ``chosen`` stops the server afterwards and checks it is gone.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lazyfs.fs import mount_server_client as server_client
from providers.fslock import exclusive_lock_until

EXEC, SERVER = "exec", "server"
PATHS = (EXEC, SERVER)
_PR_SET_CHILD_SUBREAPER = 36


@contextmanager
def chosen(path: str, store: Path, setenv: Callable[[str, str], None]) -> Iterator[None]:
    """Mounts of ``store`` start on ``path`` inside; no server of it is left running after."""
    setenv(server_client.ENV, "1" if path == SERVER else "0")
    try:
        yield
    finally:
        stop(store)


def stop(store: Path) -> None:
    """Stop the mount server of ``store``, if one runs or is starting, and check it is gone."""
    directory = server_client.server_dir(store)
    if directory.is_dir():
        # One starting holds start.lock until it listens (or dies): then it can be stopped.
        deadline = time.monotonic() + server_client.START_TIMEOUT
        with exclusive_lock_until(directory / server_client.LOCK_NAME, deadline, AssertionError):
            pass
    pid = server_client.stop_server(directory)
    assert pid is None or not alive(pid)
    assert server_client.server_pid(server_client.server_dir(store)) is None


def server_of(store: Path) -> int:
    """The pid of the mount server of ``store``, which must be running."""
    pid = server_client.server_pid(server_client.server_dir(store))
    assert pid is not None, f"no mount server runs for {store}"
    return pid


@contextmanager
def adopting_orphans() -> Iterator[None]:
    """This process adopts the orphans of its descendants inside (a child subreaper).

    A mount process whose server died is reparented; adopted by this process
    it is reaped on unmount (``lazyfs.fs.mount.unmount`` waits for it),
    whatever the machine's init does with zombies.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def parent(pid: int) -> int:
    """The parent process of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return int(fields[1])


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(child) for child in text.split()}


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (ours are reaped by a thread)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != b"Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` ended within ``timeout`` (not our child: polled, not waited for)."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def processes(store: Path) -> list[int]:
    """Pids of the mount server processes of ``store``, listening or not (by command line)."""
    directory = os.fsencode(server_client.server_dir(store))
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            if b"lazyfs.fs.mount_server" in argv and directory in argv:
                found.append(int(proc.name))
    return found
