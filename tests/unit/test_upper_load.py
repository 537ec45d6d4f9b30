"""The writable state loaded back from an upper a mount left, and uppers that must be refused.

In-process, no FUSE: changes go through ``Upper``'s own operations, then a
second ``Upper`` over the same upper and work must hold the same view
(names, attributes, contents, xattrs, which names share an inode).  The
upper holds what a container made, so hostile shapes are loaded safely or
refused with one ``UpperDamaged`` line.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import TarRangeReader, open_layers
from lazyfs.fs import upper_copy
from lazyfs.fs.upper import METACOPY_XATTR, REDIRECT_XATTR, Copy, Node, Upper, UpperError
from lazyfs.fs.upper_load import UpperDamaged
from lazyfs.index.model import LayerIndex
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO, InodeNo, merge
from providers.digest import digest_bytes
from providers.fstree import remove_tree
from tests.support.images import Entry, whiteout, write_layer
from tests.support.kept_trees import served_tree

LAYERS = [
    [
        Entry("etc", "dir"),
        Entry("etc/a", data=b"aaaa", xattrs={"user.x": b"1"}),
        Entry("etc/h", "hardlink", target="etc/a"),
        Entry("etc/gone", data=b"gone"),
        Entry("big", data=b"big" * 1000),
        Entry("ren", "dir"),
        Entry("ren/x", data=b"x"),
        Entry("ren/sub", "dir"),
        Entry("ren/sub/y", data=b"y"),
        Entry("lh", data=b"lower hardlink"),
        Entry("lh2", "hardlink", target="lh"),
        Entry("s", "symlink", target="etc"),
    ],
    [whiteout("etc/gone2"), Entry("etc/b", data=b"b")],
]


@dataclass
class Fixture:
    tmp_path: Path
    indexes: list[LayerIndex]
    reader: TarRangeReader
    upper: Path
    work: Path
    tree: str

    def view(self) -> Upper:
        if self.tree == "merged":
            return Upper(merge(self.indexes), self.upper, self.work, self.reader)
        served = served_tree(self.tmp_path / "layers", self.indexes)
        return Upper(served, self.upper, self.work, self.reader)


# Each view over the tree in memory, and over the packed tree a mount maps.
@pytest.fixture(params=["merged", "mapped"])
def fx(tmp_path: Path, request: pytest.FixtureRequest) -> Fixture:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    indexes, tars = [], {}
    for i, entries in enumerate(LAYERS):
        blob = write_layer(entries, tmp_path / f"{i}.tar")
        digest = digest_bytes(blob.read_bytes())
        index = ensure_index(layers, tmp, digest, blob)
        indexes.append(index)
        tars[digest] = check_data_present(layers, blob, index)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return Fixture(tmp_path, indexes, open_layers(tars), upper, work, request.param)


def contents(state: Upper, node: Node) -> bytes | None:
    if not stat.S_ISREG(node.mode):
        return None
    if node.copy is Copy.DATA:
        fd = state.open_file(node, os.O_RDONLY)
        try:
            return os.pread(fd, node.size + 1, 0)
        finally:
            os.close(fd)
    data = node.lower_data
    assert data is not None
    return state.reader.read_range(data.digest, data.offset, data.size)


def walk(state: Upper) -> dict[bytes, tuple[object, ...]]:
    """Every path of the view: attributes, contents, xattrs, and the paths sharing its inode."""
    found: dict[bytes, tuple[object, ...]] = {}
    paths: dict[InodeNo, list[bytes]] = {}
    nodes: dict[bytes, Node] = {}
    pending: list[tuple[bytes, int]] = [(b"", ROOT_INO)]
    while pending:
        prefix, ino = pending.pop()
        for name, child in state.listing(ino):
            path = prefix + b"/" + name
            node = state.node(child)
            nodes[path] = node
            paths.setdefault(node.ino, []).append(path)
            if node.children is not None:
                pending.append((path, child))
    for path, node in nodes.items():
        found[path] = (
            node.mode,
            node.uid,
            node.gid,
            node.size,
            node.nlink,
            node.target,
            node.rdev,
            sorted(node.xattrs.items()),
            contents(state, node),
            sorted(paths[node.ino]) if node.children is None else None,
        )
    return found


async def test_every_kind_of_change_loads_back_as_it_was(fx: Fixture) -> None:
    state = fx.view()
    root = ROOT_INO

    def at(*names: bytes) -> Node:
        ino: int = root
        for name in names:
            found = state.lookup(ino, name)
            assert found is not None, names
            ino = found.ino
        return state.node(ino)

    etc = at(b"etc").ino
    state.remove(etc, b"gone", directory=False)  # a whiteout
    state.set_mode(at(b"big"), 0o600)  # a metacopy
    state.set_owner(at(b"etc", b"a"), 3, 4)  # a metacopy at two names
    state.set_xattr(at(b"etc", b"a"), b"user.more", b"2")
    b = at(b"etc", b"b")
    await state.truncate(b, 1)  # data copied up
    await state.link(b.ino, etc, b"b2")  # a hardlink in upper
    await state.link(at(b"etc", b"h").ino, root, b"h-elsewhere")  # a metacopy redirected
    await state.rename(root, b"ren", root, b"ren2", 0)  # a lower directory redirected
    ren2 = at(b"ren2").ino
    state.remove(ren2, b"x", directory=False)
    await state.rename(ren2, b"sub", root, b"sub2", 0)
    state.remove(root, b"lh2", directory=False)  # a lower hardlink loses a name
    state.remove(root, b"s", directory=False)
    mine = state.new(root, b"s", stat.S_IFDIR | 0o700, 0, 0)  # opaque, over a lower symlink
    state.new(mine.ino, b"f", stat.S_IFREG | 0o644, 5, 5)
    state.new(root, b"fifo", stat.S_IFIFO | 0o600, 0, 0)
    state.new(root, b"link", stat.S_IFLNK | 0o777, 0, 0, target=b"/outside/of/it")
    state.set_times(at(b"etc", b"h"), 1, 2)
    before = walk(state)
    assert before[b"/lh"][4] == 1 and before[b"/etc/a"][4] == 3

    again = fx.view()
    assert walk(again) == before
    assert again.node(again.lookup(root, b"big").ino).copy is Copy.META  # type: ignore[union-attr]


def test_an_upper_of_another_mount_loads_again_and_again(fx: Fixture) -> None:
    state = fx.view()
    state.remove(ROOT_INO, b"lh", directory=False)
    first = walk(state)
    assert walk(fx.view()) == first
    assert walk(fx.view()) == first


def test_a_fresh_upper_is_set_up_once_then_loaded(fx: Fixture) -> None:
    state = fx.view()
    state.set_mode(state.node(ROOT_INO), 0o700)
    assert os.listdir(fx.upper) == []  # the root's mode is on the upper itself
    again = fx.view()
    assert stat.S_IMODE(again.node(ROOT_INO).mode) == 0o700


def test_leftovers_of_a_dead_copy_up_are_removed_from_work(fx: Fixture) -> None:
    fx.view()
    (fx.work / "copyup-7-abc").write_bytes(b"half")
    (fx.work / "link-0").write_bytes(b"")
    fx.view()
    assert os.listdir(fx.work) == []


def test_a_0_0_device_cannot_be_made(fx: Fixture) -> None:
    state = fx.view()
    with pytest.raises(UpperError) as refused:
        state.new(ROOT_INO, b"dev", stat.S_IFCHR | 0o600, 0, 0, rdev=0)
    assert refused.value.errno == errno.EPERM
    assert not os.path.lexists(fx.upper / "dev")


def test_a_whiteout_that_hides_nothing_is_removed(fx: Fixture) -> None:
    fx.view()
    os.mknod(fx.upper / "nothing", stat.S_IFCHR | 0o600, 0)
    state = fx.view()
    assert state.lookup(ROOT_INO, b"nothing") is None
    state.new(ROOT_INO, b"nothing", stat.S_IFREG | 0o644, 0, 0)  # no whiteout in the way


def test_symlinks_in_the_upper_are_never_followed(fx: Fixture) -> None:
    outside = fx.tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host")
    fx.view()
    os.symlink(outside, fx.upper / "evil")
    os.symlink(outside, fx.upper / "etc")  # over a lower directory
    state = fx.view()
    evil = state.lookup(ROOT_INO, b"evil")
    assert evil is not None and stat.S_ISLNK(evil.mode) and evil.target == os.fsencode(outside)
    etc = state.lookup(ROOT_INO, b"etc")
    assert etc is not None and stat.S_ISLNK(etc.mode) and etc.children is None
    state.set_owner(etc, 9, 9)
    assert os.stat(outside).st_uid != 9 and os.lstat(fx.upper / "etc").st_uid == 9


def test_any_depth_loads(fx: Fixture) -> None:
    fx.view()
    fd = os.open(fx.upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # past Python's recursion limit
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    try:
        state = fx.view()
        ino: int = ROOT_INO
        for _ in range(1500):
            found = state.lookup(ino, b"d")
            assert found is not None
            ino = found.ino
        assert state.lookup(ino, b"f") is not None
    finally:
        remove_tree(fx.upper / "d")  # pytest's own clean-up recurses


@pytest.mark.parametrize(
    "redirect",
    [
        b"/ren/../etc",
        b"../ren",
        b"ren/sub",
        b"/",
        b"//ren",
        b"/ren/",
        b"",
        b"a\0b",
        b"/" + b"n" * 256,
    ],
)
def test_bad_redirects_are_refused(fx: Fixture, redirect: bytes) -> None:
    fx.view()
    (fx.upper / "moved").mkdir()
    os.setxattr(fx.upper / "moved", REDIRECT_XATTR, redirect)
    with pytest.raises(UpperDamaged) as refused:
        fx.view()
    assert str(refused.value).startswith(f"upper directory {fx.upper}: moved has a bad redirect")


def test_a_redirect_to_nothing_merges_nothing(fx: Fixture) -> None:
    fx.view()
    (fx.upper / "moved").mkdir()
    os.setxattr(fx.upper / "moved", REDIRECT_XATTR, b"/no/such/dir")
    state = fx.view()
    assert state.listing(state.lookup(ROOT_INO, b"moved").ino) == []  # type: ignore[union-attr]


def test_a_lower_directory_merged_twice_is_refused(fx: Fixture) -> None:
    fx.view()
    for name in ("one", "two"):
        (fx.upper / name).mkdir()
        os.setxattr(fx.upper / name, REDIRECT_XATTR, b"/ren")
    with pytest.raises(UpperDamaged, match="merged elsewhere already"):
        fx.view()


def test_a_lower_directory_shown_at_its_place_and_through_a_redirect_is_refused(
    fx: Fixture,
) -> None:
    fx.view()
    (fx.upper / "alias").mkdir()
    os.setxattr(fx.upper / "alias", REDIRECT_XATTR, b"/ren/sub")
    with pytest.raises(UpperDamaged, match="/ren/sub is shown at its place and through"):
        fx.view()


def test_a_redirect_to_an_ancestor_is_refused(fx: Fixture) -> None:
    fx.view()
    (fx.upper / "ren" / "loop").mkdir(parents=True)
    os.setxattr(fx.upper / "ren" / "loop", REDIRECT_XATTR, b"/ren")
    with pytest.raises(UpperDamaged):
        fx.view()


@pytest.mark.parametrize(
    ("size", "redirect", "why"),
    [
        (4, None, "has no lower file with data"),  # nothing at its own path
        (4, b"/etc", "has no lower file with data"),  # a directory
        (4, b"/etc/a/deeper", "has no lower file with data"),
        (5, b"/etc/a", "is 5 bytes, its lower file 4"),
    ],
)
def test_metacopies_without_their_lower_bytes_are_refused(
    fx: Fixture, size: int, redirect: bytes | None, why: str
) -> None:
    fx.view()
    path = fx.upper / "moved"
    path.write_bytes(b"")
    os.truncate(path, size)
    os.setxattr(path, METACOPY_XATTR, b"")
    if redirect is not None:
        os.setxattr(path, REDIRECT_XATTR, redirect)
    with pytest.raises(UpperDamaged) as refused:
        fx.view()
    assert str(refused.value) == f"upper directory {fx.upper}: metacopy moved {why}"


def test_names_of_one_metacopy_with_other_lower_files_are_refused(fx: Fixture) -> None:
    fx.view()
    (fx.upper / "etc").mkdir()
    os.truncate(os.open(fx.upper / "etc" / "a", os.O_CREAT | os.O_WRONLY, 0o644), 4)
    os.setxattr(fx.upper / "etc" / "a", METACOPY_XATTR, b"")
    os.link(fx.upper / "etc" / "a", fx.upper / "etc" / "gone")  # lower etc/gone: 4 bytes too
    with pytest.raises(UpperDamaged, match="has another lower file than its other names"):
        fx.view()


def test_a_metacopy_that_fails_halfway_leaves_no_zeros_for_the_next_mount(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = fx.view()
    big = state.lookup(ROOT_INO, b"big")
    assert big is not None

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upper_copy, "set_xattr_at", full)  # as a mount killed right there
    with pytest.raises(OSError):
        state.set_mode(big, 0o600)
    monkeypatch.undo()
    assert not os.path.lexists(fx.upper / "big") and os.listdir(fx.work) == []
    again = fx.view()
    loaded = again.lookup(ROOT_INO, b"big")
    assert loaded is not None and contents(again, loaded) == b"big" * 1000
