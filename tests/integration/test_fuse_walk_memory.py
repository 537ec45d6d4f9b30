"""A ``find`` and a read-all over a writable mount make it keep nothing per entry.

A real mount, on both paths: the kernel holds every entry the walk looked
up (nothing forgets them while memory is plentiful), and the mount process
must not keep a node for each.  Counted by the nodes it reports holding in
its ``--debug`` log, not by RSS.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cow_mounts import CowMounts
from tests.support.images import Entry

pytestmark = pytest.mark.integration

DIRS, FILES = 20, 100
HELD = re.compile(rb"\[(\d+) nodes held\]")


@pytest.fixture
def mounts(tmp_path: Path, fuse_path: str) -> Iterator[CowMounts]:
    made = CowMounts(tmp_path)
    try:
        yield made
    finally:
        made.close()


def image() -> list[Entry]:
    entries = []
    for d in range(DIRS):
        entries.append(Entry(f"d{d:02}", "dir"))
        entries += [Entry(f"d{d:02}/f{f:03}", data=f"{d}/{f}".encode()) for f in range(FILES)]
        entries.append(Entry(f"d{d:02}/link", "symlink", target="f000"))
    return entries


def nodes_held(log: Path, root: Path) -> int:
    """How many nodes the mount at ``root`` holds, from its ``--debug`` log.

    statfs is never cached, so it reaches the mount, which logs its count.
    """
    os.statvfs(root)
    return int(HELD.findall(log.read_bytes())[-1])


def walk(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry ``lstat``-ed, every file read: inode, mode, size and bytes by path."""
    seen = {}
    for top, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(top, entry)
            st = os.lstat(path)
            data = Path(path).read_bytes() if stat.S_ISREG(st.st_mode) else b""
            seen[os.path.relpath(path, root)] = (st.st_ino, st.st_mode, st.st_size, data)
    return seen


def test_a_walk_and_a_read_all_keep_no_node_per_entry(mounts: CowMounts) -> None:
    m = mounts.mount([image()], debug=True)
    (m.root / "d00" / "new").write_bytes(b"new")  # a change is kept, as always
    start = nodes_held(mounts.log, m.root)
    seen = walk(m.root)
    assert len(seen) == DIRS * (FILES + 2) + 1
    assert seen["d07/f042"][3] == b"7/42" and seen["d00/new"][3] == b"new"
    # Every entry looked up, and none of them kept a node (on main: one each).
    assert nodes_held(mounts.log, m.root) <= start + 2
    assert walk(m.root) == seen  # the same inodes and bytes when walked again
