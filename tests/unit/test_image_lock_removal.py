"""An image's lock file goes as its pull lets go of it, and that never lets two processes
hold the lock: one that waited on the removed file takes the path's file instead."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import trio

from lazyfs.store.disk import Store
from providers.fslock import try_exclusive_lock
from tests.support.lazyfs_cli import REPO

NAME = "image-0123"
# Bounds a wait that never ends (a waiter that never blocks): fails the test, not a race.
GUARD = 60.0

# The other process: waits for the image's lock (the blocking form, so that it is seen
# waiting on the file it opened), says so once held, lets go when told.
WAITER = f"""
import sys
from pathlib import Path
from lazyfs.store.disk import Store

with Store(Path(sys.argv[1])).lock({NAME!r}, remove=True):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _blocked_on(pid: int, inode: int) -> bool:
    """Whether process ``pid`` waits for a flock of the file ``inode`` (``/proc/locks``)."""
    with open("/proc/locks", encoding="ascii") as table:
        for line in table:
            fields = line.split()
            if (
                "->" in fields
                and str(pid) in fields
                and any(f.endswith(f":{inode}") for f in fields)
            ):
                return True
    return False


def _wait_blocked(waiter: subprocess.Popen[str], inode: int) -> None:
    """Wait until ``waiter`` waits on the lock of ``inode``; it must not say it holds it."""
    assert waiter.stdout is not None
    deadline = time.monotonic() + GUARD
    while not _blocked_on(waiter.pid, inode):
        assert waiter.poll() is None, waiter.communicate()
        assert time.monotonic() < deadline, "the other process never waited for the lock"
        said, _, _ = select.select([waiter.stdout], [], [], 0.01)
        assert not said, "the other process took a lock this one holds"


def test_a_process_waiting_on_a_removed_image_lock_never_holds_it_beside_another(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "store")
    path = store.locks / f"{NAME}.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", WAITER, str(store.root)]

    async def pull() -> subprocess.Popen[str]:
        # A pull holds the image's lock; the other process opens its file and waits.
        async with store.lock_async(NAME, remove=True):
            inode = path.stat().st_ino
            waiter = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
            )
            try:
                _wait_blocked(waiter, inode)
            except BaseException:
                waiter.kill()
                waiter.wait()
                raise
        # Let go: the file it waits on is gone, and the path names another or none.
        return waiter

    waiter = trio.run(pull)
    try:
        assert waiter.stdin is not None and waiter.stdout is not None
        assert waiter.stdout.readline() == "held\n"
        # It holds the lock now, of the file the path names: no one else gets it.
        with try_exclusive_lock(path) as free:
            assert not free, "two processes held the image's lock at once"
        waiter.stdin.write("done\n")
        waiter.stdin.close()
        assert waiter.wait(timeout=GUARD) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert not path.exists()  # removed by the last holder as it let go
