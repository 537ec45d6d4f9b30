"""The copy-on-write operations without open: what only that path does, and what both must.

In-process, as ``tests/unit/test_fuse_write.py`` (whose image and helpers
these tests share); the no-open path is driven as the kernel drives it
(``tests.support.fuse_paths.NoOpenKernel``).
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest

from lazyfs.blobs.ranges import ChunkCache, open_layers
from lazyfs.fs import writable_no_open
from lazyfs.fs.upper import Upper
from lazyfs.fs.writable import WritableOperations
from lazyfs.fs.writable_no_open import SNAPSHOTS, NoOpenWritableOperations
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from tests.support import fuse_paths, sparse
from tests.support.images import Entry
from tests.support.tree import is_whiteout
from tests.support.writable_ops import BIG, CTX, ino, make_ops, name, ops_of_layers, setting


@pytest.fixture(params=fuse_paths.PATHS)
def ops(tmp_path: Path, request: pytest.FixtureRequest) -> WritableOperations:
    return make_ops(tmp_path, request.param)


@pytest.fixture
def no_open(tmp_path: Path) -> WritableOperations:
    return make_ops(tmp_path, fuse_paths.NO_OPEN)


def open_fds() -> set[str]:
    gc.collect()  # what earlier tests left in reference cycles closes its fds now, not mid-test
    return set(os.listdir("/proc/self/fd"))


class Listing:
    """readdir with room for ``room`` entries per call, as a small kernel buffer gives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, room: int) -> None:
        self.room = room
        self.left = room
        self.batch: list[tuple[bytes, int]] = []
        monkeypatch.setattr(pyfuse3, "readdir_reply", self.reply)

    def reply(self, token: Any, entry_name: bytes, attr: Any, next_id: int) -> bool:
        if self.left == 0:
            return False
        self.left -= 1
        self.batch.append((entry_name, next_id))
        return True

    async def next_batch(self, ops: WritableOperations, fh: int, offset: int) -> list[bytes]:
        self.left, self.batch = self.room, []
        await ops.readdir(pyfuse3.FileHandleT(fh), offset, cast(pyfuse3.ReaddirToken, None))
        return [entry for entry, _ in self.batch]


async def make_files(ops: WritableOperations, count: int) -> pyfuse3.InodeT:
    many = (await ops.mkdir(ROOT_INO, name("many"), 0o755, CTX)).st_ino
    for i in range(count):
        info, _ = await ops.create(many, name(f"f{i:02}"), 0o644, os.O_WRONLY, CTX)
        await ops.release(info.fh)
    return many


async def remove_while_listing(
    ops: WritableOperations, listing: Listing, parent: pyfuse3.InodeT, calls: int
) -> list[bytes]:
    """What ``rm -r`` does: list a few, remove them, list on from the offset it was given.

    At most ``calls`` readdirs (a broken readdir may never reach the end); what they listed.
    """
    fh = await ops.opendir(parent, CTX)
    seen: list[bytes] = []
    offset = 0
    for _ in range(calls):
        if not (batch := await listing.next_batch(ops, fh, offset)):
            break
        offset = listing.batch[-1][1]
        seen += batch
        for entry in batch:
            if entry not in (b".", b".."):
                await ops.unlink(parent, pyfuse3.FileNameT(entry), CTX)
    await ops.releasedir(fh)
    return seen


async def test_names_removed_while_listing_never_make_others_skipped(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``rm -r`` does: list a few, remove them, list on from the offset it was given."""
    many = await make_files(ops, 20)
    seen = await remove_while_listing(ops, Listing(monkeypatch, room=3), many, calls=20)
    assert seen == [b".", b"..", *(b"f%02d" % i for i in range(20))]
    assert ops.upper.listing(many) == []


async def test_names_added_while_listing_never_make_others_listed_twice(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(ops, 10)
    listing = Listing(monkeypatch, room=4)
    fh = await ops.opendir(many, CTX)
    seen, offset = [], 0
    for _ in range(20):  # bounded: a broken readdir may never reach the end
        if not (batch := await listing.next_batch(ops, fh, offset)):
            break
        offset = listing.batch[-1][1]
        seen += batch
        info, _ = await ops.create(many, name(f"a{len(seen)}"), 0o644, os.O_WRONLY, CTX)
        await ops.release(info.fh)  # sorts before every f: would shift positions
    await ops.releasedir(fh)
    assert seen == [b".", b"..", *(b"f%02d" % i for i in range(10))]


async def test_a_reader_continues_in_a_new_snapshot_once_its_own_was_dropped(
    no_open: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(no_open, 6)
    listing = Listing(monkeypatch, room=4)
    first = await listing.next_batch(no_open, many, 0)
    offset = listing.batch[-1][1]
    for _ in range(SNAPSHOTS):  # other listings push this one's snapshot out
        await listing.next_batch(no_open, ROOT_INO, 0)
    rest = await listing.next_batch(no_open, many, offset)
    assert first + rest == [b".", b"..", *(b"f%02d" % i for i in range(6))]


async def test_a_lower_file_unlinked_while_open_takes_writes_and_truncates(
    ops: WritableOperations,
) -> None:
    big = await ino(ops, "big")
    info = await ops.open(big, os.O_RDWR, CTX)
    await ops.unlink(ROOT_INO, name("big"), CTX)
    assert await ops.write(info.fh, 0, b"NEW") == 3
    assert await ops.read(info.fh, 0, 5) == b"NEW" + BIG[3:5]
    attr = pyfuse3.EntryAttributes()
    attr.st_size = 4
    await ops.setattr(big, attr, setting("size"), info.fh, CTX)
    assert await ops.read(info.fh, 0, 10) == b"NEW" + BIG[3:4]
    await ops.release(info.fh)
    assert is_whiteout(ops.upper.upper / "big")
    assert list(ops.upper.work.iterdir()) == []  # the copy has no name anywhere


async def test_opening_for_writing_copies_nothing_until_something_changes(
    no_open: WritableOperations,
) -> None:
    passwd = await ino(no_open, "etc/passwd")
    info = await no_open.open(passwd, os.O_WRONLY, CTX)
    await no_open.release(info.fh)
    assert not (no_open.upper.upper / "etc").exists()
    info = await no_open.open(passwd, os.O_WRONLY, CTX)
    await no_open.write(info.fh, 0, b"R")
    await no_open.release(info.fh)
    assert (no_open.upper.upper / "etc" / "passwd").read_bytes() == b"Root\n"


async def test_o_trunc_empties_a_lower_file_through_setattr(no_open: WritableOperations) -> None:
    big = await ino(no_open, "big")
    reader = await no_open.open(big, os.O_RDONLY, CTX)
    assert await no_open.read(reader.fh, 0, 3) == BIG[:3]
    await no_open.open(big, os.O_WRONLY | os.O_TRUNC, CTX)  # the kernel sends a setattr
    assert (no_open.upper.upper / "big").read_bytes() == b""
    assert await no_open.read(reader.fh, 0, 3) == b""


async def test_an_unlinked_file_keeps_its_fd_until_the_kernel_forgets_it(
    no_open: WritableOperations,
) -> None:
    before = open_fds()
    info, attrs = await no_open.create(ROOT_INO, name("f"), 0o644, os.O_WRONLY, CTX)
    await no_open.write(info.fh, 0, b"data")
    await no_open.release(info.fh)
    assert await ino(no_open, "f") == attrs.st_ino  # the kernel's second lookup of it
    reader = await no_open.open(attrs.st_ino, os.O_RDONLY, CTX)
    await no_open.unlink(ROOT_INO, name("f"), CTX)
    assert open_fds() != before
    await no_open.forget([(attrs.st_ino, 1)])  # one of two lookups: it is still known
    assert await no_open.read(reader.fh, 0, 10) == b"data"
    await no_open.forget([(attrs.st_ino, 1)])
    assert open_fds() == before


@pytest.mark.parametrize("form", sparse.FORMS)
async def test_an_unlinked_sparse_file_is_copied_as_its_data_and_holes(
    tmp_path: Path, form: str
) -> None:
    """Never as the raw tar after its stored data, which holds the next entry (etc/shadow)."""
    tar = sparse.gnu_tar(sparse.make_tree(tmp_path / "tree"), tmp_path / "layer.tar", form)
    layers, tmp, upper, work = (tmp_path / d for d in ("layers", "tmp", "upper", "work"))
    for directory in (layers, tmp, upper, work):
        directory.mkdir()
    digest = digest_bytes(tar.read_bytes())
    index = ensure_index(layers, tmp, digest, tar)
    source = open_layers({digest: check_data_present(layers, tar, index)})
    view = Upper(merge([index]), upper, work, source)
    ops = fuse_paths.NoOpenKernel(NoOpenWritableOperations(view, ChunkCache(source)))
    etc = await ino(ops, "etc")  # type: ignore[arg-type]
    public = (await ops.lookup(etc, name("public"), CTX)).st_ino
    info = await ops.open(public, os.O_RDWR, CTX)
    await ops.unlink(etc, name("public"), CTX)
    assert await ops.write(info.fh, 0, b"P") == 1
    want = b"P" + sparse.expected("etc/public")[1:]
    got = b""
    while chunk := await ops.read(info.fh, len(got), 1 << 20):
        got += chunk
    await ops.release(info.fh)
    assert got == want


async def test_a_node_goes_once_forgotten_and_unlinked_not_before(ops: WritableOperations) -> None:
    start = ops.upper.held()
    made = [(await ops.create(ROOT_INO, name(f"n{i}"), 0o644, os.O_WRONLY, CTX)) for i in range(3)]
    for info, _ in made:
        await ops.release(info.fh)
    first, second, third = (attrs.st_ino for _, attrs in made)
    assert (await ops.lookup(ROOT_INO, name("n0"), CTX)).st_ino == first  # looked up twice now
    for each in ("n0", "n1"):
        await ops.unlink(ROOT_INO, name(each), CTX)
    await ops.forget([(first, 1), (second, 1), (third, 1)])
    # n0: the kernel still knows it; n2: a name still reaches it.
    assert ops.upper.held() == start + 2
    assert (await ops.getattr(first, CTX)).st_nlink == 0
    assert (await ops.getattr(third, CTX)).st_nlink == 1
    await ops.forget([(first, 1)])
    assert ops.upper.held() == start + 1
    assert ops.upper.find(first) is None and ops.upper.find(third) is not None


async def test_a_lower_node_goes_once_forgotten_unless_something_of_it_changed(
    ops: WritableOperations,
) -> None:
    start = ops.upper.held()
    etc = await ino(ops, "etc")
    found = {
        each: (await ops.lookup(etc, name(each), CTX)).st_ino
        for each in ("passwd", "top")  # lower files, as the tree has them
    }
    d = (await ops.lookup(ROOT_INO, name("d"), CTX)).st_ino
    before = await ops.getattr(found["top"], CTX)
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = pyfuse3.ModeT(0o100600)
    await ops.setattr(found["passwd"], attr, setting("mode"), None, CTX)
    await ops.forget([(found["passwd"], 1), (found["top"], 1), (d, 1), (etc, 1)])
    # passwd changed, and etc with it (copied up to hold it); top and d are as the tree has them.
    assert ops.upper.find(found["passwd"]) is not None
    assert ops.upper.held() == start + 2
    again = await ops.getattr(found["top"], CTX)  # made again from the tree, the same
    assert (again.st_ino, again.st_mode, again.st_mtime_ns, again.st_nlink) == (
        before.st_ino,
        before.st_mode,
        before.st_mtime_ns,
        before.st_nlink,
    )
    assert (await ops.getattr(found["passwd"], CTX)).st_mode & 0o777 == 0o600


async def test_a_listing_leaves_out_what_went_and_was_forgotten_meanwhile(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(ops, 4)
    gone = (await ops.lookup(many, name("f02"), CTX)).st_ino
    listing = Listing(monkeypatch, room=3)
    fh = await ops.opendir(many, CTX)
    first = await listing.next_batch(ops, fh, 0)
    await ops.unlink(many, name("f02"), CTX)
    await ops.forget([(gone, 2)])  # create's lookup and ours
    rest = await listing.next_batch(ops, fh, listing.batch[-1][1])
    await ops.releasedir(fh)
    assert first + rest == [b".", b"..", b"f00", b"f01", b"f03"]


# Not UTF-8 and UTF-8: sorted as bytes, b"a\xef\xbf\xbd" would come first; the tree has b"a\xff".
ODD_NAMES = ["a\udcff", "a\ufffd", *(f"f{i:02}" for i in range(20))]


@pytest.mark.parametrize("path", fuse_paths.PATHS)
async def test_removing_a_lower_directory_while_listing_it_skips_no_name(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rm -r`` of a directory nothing had changed: read from the tree's listing at first."""
    image = [[Entry("big", "dir"), *(Entry(f"big/{n}", data=b"") for n in ODD_NAMES)]]
    ops = ops_of_layers(tmp_path, path, image)
    big = await ino(ops, "big")
    seen = await remove_while_listing(ops, Listing(monkeypatch, room=3), big, calls=30)
    assert seen == [b".", b"..", *(os.fsencode(n) for n in ODD_NAMES)]
    assert ops.upper.listing(big) == []


async def test_a_reader_whose_snapshot_was_dropped_goes_on_after_the_last_name_it_had(
    no_open: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(no_open, 6)
    listing = Listing(monkeypatch, room=4)
    first = await listing.next_batch(no_open, many, 0)
    offset = listing.batch[-1][1]
    for entry in first[2:]:
        await no_open.unlink(many, pyfuse3.FileNameT(entry), CTX)
    monkeypatch.setattr(writable_no_open, "SNAPSHOTS", 1)
    await listing.next_batch(no_open, ROOT_INO, 0)  # pushes the snapshot of many out
    rest = await listing.next_batch(no_open, many, offset)
    assert first + rest == [b".", b"..", *(b"f%02d" % i for i in range(6))]


async def test_readers_of_a_directory_that_did_not_change_share_its_snapshot(
    no_open: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(no_open, 2000)
    listing = Listing(monkeypatch, room=3)
    await listing.next_batch(no_open, many, 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(SNAPSHOTS):  # as many readers at once, each one batch in
            await listing.next_batch(no_open, many, 0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 2000  # a copy of the listing is more: 64 bytes or so an entry


async def test_a_name_gone_while_listed_is_left_out_and_one_replaced_is_listed_anew(
    ops: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = await make_files(ops, 8)
    listing = Listing(monkeypatch, room=4)
    fh = await ops.opendir(many, CTX)
    first = await listing.next_batch(ops, fh, 0)
    await ops.unlink(many, name("f05"), CTX)
    await ops.rename(many, name("f06"), ROOT_INO, name("moved"), 0, CTX)
    info, made = await ops.create(many, name("made"), 0o644, os.O_WRONLY, CTX)
    await ops.release(info.fh)
    await ops.rename(many, name("made"), many, name("f07"), 0, CTX)
    entries: list[tuple[bytes, int]] = []

    def reply(token: Any, entry_name: bytes, attr: Any, next_id: int) -> bool:
        entries.append((entry_name, attr.st_ino))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    await ops.readdir(fh, listing.batch[-1][1], cast(pyfuse3.ReaddirToken, None))
    await ops.releasedir(fh)
    assert first == [b".", b"..", b"f00", b"f01"]
    assert entries == [(b"f%02d" % i, await ino(ops, f"many/f{i:02}")) for i in (2, 3, 4)] + [
        (b"f07", made.st_ino)
    ]


async def test_snapshots_of_a_big_directory_changed_between_readers_are_bounded_in_entries(
    no_open: WritableOperations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container that adds a file before each listing: each reader gets a new snapshot.
    monkeypatch.setattr(writable_no_open, "SNAPSHOT_ENTRIES", 4000)
    many = await make_files(no_open, 2000)
    listing = Listing(monkeypatch, room=3)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(SNAPSHOTS):
            info, _ = await no_open.create(many, name(f"g{i:02}"), 0o644, os.O_WRONLY, CTX)
            await no_open.release(info.fh)
            await listing.next_batch(no_open, many, 0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Two snapshots' worth held at most (the cap, and the newest), not 64 copies.
    assert grown < 8 * 2000 * 64
