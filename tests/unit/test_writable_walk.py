"""A writable mount keeps nothing per inode for a walk or a read of what nothing changed.

In-process, on both paths (``tests.support.fuse_paths``), over the packed
tree a mount serves: the operations are driven as a kernel that holds every
entry it was given (no forget until the test says), the worst case for a
``find`` over a big image.  What the mount keeps is counted by its nodes
(``Upper.held``) and by the bytes lazyfs's own code allocated and still
holds (tracemalloc, by file), not by RSS.
"""

from __future__ import annotations

import gc
import os
import stat
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest

import lazyfs
from lazyfs.fs import upper_state
from lazyfs.fs.writable import WritableOperations
from lazyfs.fs.writable_lookups import LookupCounts
from lazyfs.tree.merge import ROOT_INO
from tests.support import fuse_paths
from tests.support.images import Entry, whiteout
from tests.support.writable_ops import CTX, name, ops_of_layers, setting

DIRS, FILES = 12, 40


def image() -> list[list[Entry]]:
    """Two layers: directories of files, symlinks, hardlinks, xattrs; a whiteout and a cover."""
    lower: list[Entry] = []
    for d in range(DIRS):
        lower.append(Entry(f"d{d:02}", "dir", mode=0o755))
        for f in range(FILES):
            xattrs = {"user.n": str(f).encode()} if f % 7 == 0 else {}
            lower.append(Entry(f"d{d:02}/f{f:02}", data=f"{d}/{f}\n".encode(), xattrs=xattrs))
        lower.append(Entry(f"d{d:02}/link", "symlink", target=f"f{d:02}"))
        lower.append(Entry(f"d{d:02}/sub", "dir"))
        lower.append(Entry(f"d{d:02}/sub/hard", "hardlink", target=f"d{d:02}/f00"))
    top = [whiteout("d00/f01"), Entry("d01/f01", data=b"covered\n", mode=0o600)]
    return [lower, top]


class Kernel:
    """readdir replies with room for ``room`` entries a call, and the lookups the kernel holds."""

    def __init__(self, ops: WritableOperations, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ops = ops
        self.room = 7  # a small buffer: every listing is read on from offsets
        self.batch: list[tuple[bytes, int, int]] = []
        self.held: Counter[int] = Counter()
        monkeypatch.setattr(pyfuse3, "readdir_reply", self.reply)

    def reply(self, token: Any, entry: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(self.batch) == self.room:
            return False
        self.batch.append((entry, attr.st_ino, next_id))
        if entry not in (b".", b".."):
            self.held[attr.st_ino] += 1  # readdirplus: the kernel counts a lookup of each
        return True

    async def names(self, directory: int) -> list[bytes]:
        fh = await self.ops.opendir(pyfuse3.InodeT(directory), CTX)
        found, offset = [], 0
        while True:
            self.batch = []
            await self.ops.readdir(fh, offset, cast(pyfuse3.ReaddirToken, None))
            if not self.batch:
                break
            found += [entry for entry, _, _ in self.batch]
            offset = self.batch[-1][2]
        await self.ops.releasedir(fh)
        assert found[:2] == [b".", b".."]
        return found[2:]

    async def lookup(self, parent: int, entry: bytes) -> pyfuse3.EntryAttributes:
        attrs = await self.ops.lookup(pyfuse3.InodeT(parent), pyfuse3.FileNameT(entry), CTX)
        self.held[attrs.st_ino] += 1
        return attrs

    async def forget_all(self) -> None:
        await self.ops.forget([(pyfuse3.InodeT(i), n) for i, n in self.held.items()])
        self.held.clear()

    async def read(self, ino: int) -> bytes:
        info = await self.ops.open(pyfuse3.InodeT(ino), os.O_RDONLY, CTX)
        data = b""
        while chunk := await self.ops.read(info.fh, len(data), 1 << 16):
            data += chunk
        await self.ops.release(info.fh)
        return data

    async def walk(self, *, read: bool) -> dict[str, tuple[object, ...]]:
        """Every entry below the root as ``find`` and ``cat`` see it, by path."""
        seen: dict[str, tuple[object, ...]] = {}
        pending: list[tuple[str, int]] = [("", ROOT_INO)]
        while pending:
            path, directory = pending.pop()
            for entry in await self.names(directory):
                attrs = await self.lookup(directory, entry)
                st = attrs_of(attrs)
                assert attrs_of(await self.ops.getattr(attrs.st_ino, CTX)) == st
                where = f"{path}/{entry.decode()}"
                content: object = None
                if stat.S_ISDIR(attrs.st_mode):
                    pending.append((where, attrs.st_ino))
                elif stat.S_ISLNK(attrs.st_mode):
                    content = await self.ops.readlink(attrs.st_ino, CTX)
                elif read:
                    content = await self.read(attrs.st_ino)
                keys = await self.ops.listxattr(attrs.st_ino, CTX)
                xattrs = {k: await self.ops.getxattr(attrs.st_ino, k, CTX) for k in keys}
                seen[where] = (*st, content, xattrs)
        return seen


def attrs_of(attrs: pyfuse3.EntryAttributes) -> tuple[int, ...]:
    return (
        *(attrs.st_ino, attrs.st_mode, attrs.st_nlink, attrs.st_uid, attrs.st_gid),
        *(attrs.st_size, attrs.st_mtime_ns, attrs.st_ctime_ns),
    )


def lazyfs_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """The bytes allocated by lazyfs's own code, and still held, in ``snapshot``."""
    where = os.path.join(os.path.dirname(str(lazyfs.__file__)), "*")
    return sum(
        s.size
        for s in snapshot.filter_traces([tracemalloc.Filter(True, where)]).statistics("filename")
    )


@pytest.fixture(params=fuse_paths.PATHS)
def kernel(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Kernel:
    return Kernel(ops_of_layers(tmp_path, request.param, image()), monkeypatch)


async def test_a_walk_and_a_read_all_keep_no_node_and_no_memory_per_entry(
    kernel: Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tree's inodes read recently are kept, INODES_KEPT of them: a bound
    # of its own, made small here so that the walk is many times as long.
    monkeypatch.setattr(upper_state, "INODES_KEPT", 8)
    start = kernel.ops.upper.held()
    tracemalloc.start()
    try:
        gc.collect()
        before = lazyfs_bytes(tracemalloc.take_snapshot())
        walked = len(await kernel.walk(read=True))  # what it read is let go of
        gc.collect()
        grown = lazyfs_bytes(tracemalloc.take_snapshot()) - before
    finally:
        tracemalloc.stop()
    assert walked > DIRS * FILES
    assert kernel.held  # the kernel holds every entry it saw
    # The mount keeps nothing for it: no node, and no more than its bounded
    # caches hold (inodes, a chunk, the root's snapshot): less than ten
    # nodes' worth (about a kilobyte each) for the hundreds of entries walked.
    assert kernel.ops.upper.held() == start
    assert grown < 8192, f"{grown} bytes held after a walk of {walked} entries"
    seen = await kernel.walk(read=True)
    assert seen["/d00/sub/hard"][-2] == b"0/0\n" and "/d00/f01" not in seen
    assert seen["/d01/f01"][-2] == b"covered\n"
    assert seen["/d05/f07"][-1] == {b"user.n": b"7"}
    assert seen["/d05/link"][-2] == b"f05"


async def test_inode_numbers_and_attributes_hold_across_forgets_and_changes(
    kernel: Kernel,
) -> None:
    ops, start = kernel.ops, kernel.ops.upper.held()
    first = await kernel.walk(read=True)
    await kernel.forget_all()
    assert await kernel.walk(read=True) == first  # the same inodes, as the tree has them

    d02 = (await kernel.lookup(ROOT_INO, name("d02"))).st_ino
    d03 = (await kernel.lookup(ROOT_INO, name("d03"))).st_ino
    f00 = (await kernel.lookup(d02, name("f00"))).st_ino  # also at d02/sub/hard
    chmod = pyfuse3.EntryAttributes()
    chmod.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o600)
    await ops.setattr(f00, chmod, setting("mode"), None, CTX)
    await ops.link((await kernel.lookup(d02, name("f02"))).st_ino, d03, name("linked"), CTX)
    await ops.rename(d02, name("f03"), d03, name("moved"), 0, CTX)
    await ops.unlink(d02, name("f04"), CTX)
    written = (await kernel.lookup(d02, name("f05"))).st_ino
    info = await ops.open(written, os.O_RDWR, CTX)
    assert await ops.write(info.fh, 0, b"new") == 3
    await ops.release(info.fh)

    changed = await kernel.walk(read=True)
    assert changed["/d02/f00"][1] == changed["/d02/sub/hard"][1] == stat.S_IFREG | 0o600
    assert changed["/d02/f00"][0] == changed["/d02/sub/hard"][0] == first["/d02/f00"][0]
    assert changed["/d03/linked"][0] == changed["/d02/f02"][0] == first["/d02/f02"][0]
    assert changed["/d03/linked"][2] == 2 and changed["/d03/linked"][-2] == b"2/2\n"
    assert changed["/d03/moved"][0] == first["/d02/f03"][0] and "/d02/f03" not in changed
    assert "/d02/f04" not in changed
    assert changed["/d02/f05"][0] == first["/d02/f05"][0]
    assert changed["/d02/f05"][-2] == b"new\n"  # "2/5\n" with its first 3 bytes written
    untouched = {k: v for k, v in first.items() if not k.startswith(("/d02", "/d03"))}
    assert {k: changed[k] for k in untouched} == untouched
    # What changed is kept, and only that (with the directories holding it).
    kept = ops.upper.held() - start
    assert 0 < kept <= 10

    await kernel.forget_all()
    assert await kernel.walk(read=True) == changed  # changes and numbers survive forgets
    assert ops.upper.held() - start <= kept


def test_lookup_counts_are_dense_for_the_tree_and_exact_past_it() -> None:
    counts = LookupCounts(dense_up_to=1000)
    counts.add(1)
    counts.add(1000, 3)
    counts.add(5000)  # an inode the mount made: past the tree's
    assert (counts.get(1), counts.get(1000), counts.get(5000), counts.get(2)) == (1, 3, 1, 0)
    assert counts.sparse() == 1
    assert counts.take(1000, 2) == 1 and counts.take(1000, 5) == 0 and counts.get(1000) == 0
    assert counts.take(5000, 1) == 0 and counts.sparse() == 0
    counts.add(7, (1 << 32) - 1)
    counts.add(7, 2)  # past a cell: kept exactly all the same
    assert counts.get(7) == (1 << 32) + 1 and counts.sparse() == 1
    assert counts.take(7, 3) == (1 << 32) - 2 and counts.sparse() == 0
    assert counts.get(7) == (1 << 32) - 2


async def test_a_made_up_offset_in_a_new_directory_reads_on_in_a_snapshot(
    kernel: Kernel,
) -> None:
    # A directory made in the mount is not in the tree: an offset of the
    # tree's own listing (generation 0), as seekdir can hand back, must not
    # send it there (it answered EIO, with a traceback logged each time).
    ops = kernel.ops
    new = (await ops.mkdir(pyfuse3.InodeT(ROOT_INO), name("new"), 0o755, CTX)).st_ino
    for file in ("a", "b"):
        info, _ = await ops.create(new, name(file), 0o644, os.O_WRONLY, CTX)
        await ops.release(info.fh)
    fh = await ops.opendir(new, CTX)
    kernel.batch = []
    await ops.readdir(fh, 3, cast(pyfuse3.ReaddirToken, None))  # past ., .. and one entry
    await ops.releasedir(fh)
    assert [entry for entry, _, _ in kernel.batch] in ([b"a"], [b"b"])
