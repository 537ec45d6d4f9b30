"""A tiny pyfuse3 file system that tells which trio task served each request.

    python -m tests.support.session_loop_fs MOUNTPOINT REPORT NOTIFY_FD [MIN_TASKS]

Writes ``m`` to NOTIFY_FD once mounted.  Serves a root with attributes
the kernel may not keep, so every ``stat`` of it is a getattr, and one
name in it, ``slow``, whose lookup writes ``w`` to NOTIFY_FD and then
waits for the next getattr, so a test sees that a request is served
while another one's handler waits.  On SIGTERM it unmounts and writes to
REPORT the names of the tasks that served the getattrs, one a line.
MIN_TASKS (default 1) is ``pyfuse3.main``'s: the idle tasks it keeps.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from pathlib import Path

import pyfuse3
import trio


class Ops(pyfuse3.Operations):
    def __init__(self, notify_fd: int) -> None:
        super().__init__()
        self.notify_fd = notify_fd
        self.released: trio.Event | None = None
        self.getattr_tasks: list[str] = []

    def _entry(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = pyfuse3.InodeT(inode)
        root = inode == pyfuse3.ROOT_INODE
        entry.st_mode = pyfuse3.ModeT((stat.S_IFDIR | 0o755) if root else (stat.S_IFREG | 0o644))
        entry.attr_timeout = entry.entry_timeout = 0  # asked again every time
        return entry

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self.getattr_tasks.append(trio.lowlevel.current_task().name)
        if self.released is not None:
            self.released.set()
        return self._entry(inode)

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b"slow":
            # Released by a getattr that comes while it waits, which only
            # another task can serve. (Not by a lookup: the kernel sends
            # one lookup at a time into a directory.)
            self.released = trio.Event()
            os.write(self.notify_fd, b"w")
            await self.released.wait()
            self.released = None
            return self._entry(3)
        raise pyfuse3.FUSEError(errno.ENOENT)


async def _serve(ops: Ops, min_tasks: int) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main, min_tasks)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                break
        pyfuse3.terminate()


def main(argv: list[str]) -> int:
    mountpoint, report, notify_fd = argv[0], Path(argv[1]), int(argv[2])
    min_tasks = int(argv[3]) if len(argv) > 3 else 1
    ops = Ops(notify_fd)
    pyfuse3.init(ops, mountpoint, {"fsname=session-loop-test"})
    os.write(notify_fd, b"m")  # mounted: requests queue up until trio serves them
    try:
        trio.run(_serve, ops, min_tasks)
    finally:
        pyfuse3.close(unmount=True)
    report.write_text("".join(f"{name}\n" for name in ops.getattr_tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
