"""How many threads of a process are in statfs(2) now: a mount asked by it that does
not answer (its process stopped) keeps one there, so a test sees what is asked at once."""

from __future__ import annotations

import json
import os
import platform
import signal
import time
from pathlib import Path

from tests.support.lazyfs_cli import Lazyfs

# statfs(2), as /proc/PID/task/TID/syscall names it.
STATFS = {"x86_64": 137, "aarch64": 43}[platform.machine()]


def asking_statfs(pid: int) -> int:
    """How many threads of process ``pid`` are in statfs(2) now."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            call = (task / "syscall").read_text().split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        count += call == str(STATFS)
    return count


def asked_side_by_side(lazyfs: Lazyfs, *args: str) -> tuple[str, str]:
    """``lazyfs ARGS`` over two fuse containers, f1 and f2, provisioned here with their mount
    processes stopped: it must ask both at once (two of its threads in statfs), and then
    both answer. Its stdout and stderr. One by one, the second would be asked only once the
    first had had its seconds. The mounts run on, whatever happened; the caller destroys."""
    pids = []
    for cid in ("f1", "f2"):
        info = json.loads(lazyfs("provision", cid, "busybox", "--backend", "fuse").stdout)
        rootfs = Path(info["rootfs"])
        pids.append(int((rootfs.parent.parent / "scratch" / rootfs.name / "pid").read_text()))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped = True
    try:
        asking = lazyfs.popen(*args)
        try:
            deadline = time.monotonic() + 30  # bounds a failing test only
            while asking_statfs(asking.pid) < 2:
                assert asking.poll() is None and time.monotonic() < deadline, "never asked"
                time.sleep(0.01)
            for pid in pids:  # both answer now, within their seconds
                os.kill(pid, signal.SIGCONT)
            stopped = False
            return asking.communicate(timeout=60)
        finally:
            asking.kill()
            asking.wait()
    finally:
        if stopped:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
