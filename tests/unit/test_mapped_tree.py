"""The tree a mount serves (``lazyfs.tree.mapped``): the packed file, mapped, as the merged tree.

For every image of the conformance cases (``tests.support.backend_cases``),
the read-only FUSE operations over the mapped tree answer every request
exactly as they answer over the merged tree in memory: attributes of every
inode, every listing from every readdir offset (names, inode numbers and
attributes), lookups of every name and of absent ones, link targets,
xattrs, statfs, and the bytes of every file, read through the same layer
ranges; and each inode, its data description included (layer, offset,
size, sparse extents), is the merged tree's.  The same holds for a layer of
sparse files.  The writable view over it makes the same nodes (names,
children, attributes, lower paths).  A packed file that is truncated, has
a flipped bit or was built from other indexes is refused and built again,
never served; a store that cannot hold one still mounts.  The attributes a
read-only mount keeps stay bounded however many inodes are asked for.
"""

from __future__ import annotations

import gc
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest
import trio

from lazyfs.blobs.ranges import ChunkCache
from lazyfs.fs import read_only
from lazyfs.fs.read_only import ReadOnlyOperations
from lazyfs.fs.upper_state import UpperState
from lazyfs.index.build import scan_tar
from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.tree import mapped
from lazyfs.tree.lower import LowerTree, MergedLower
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree, merge
from lazyfs.tree.packed_read import PackedTree
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from tests.support import sparse
from tests.support.backend_cases import CASES
from tests.support.images import Entry, write_layer

CTX = cast(pyfuse3.RequestContext, None)
ATTRIBUTE_FIELDS = (
    *("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size"),
    *("st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "entry_timeout"),
)


class Indexes:
    """``load_indexes`` for ``mount_tree``, counting its calls."""

    def __init__(self, indexes: Sequence[LayerIndex]) -> None:
        self.indexes = list(indexes)
        self.calls = 0

    def __call__(self) -> list[LayerIndex]:
        self.calls += 1
        return self.indexes


def case_indexes(layers: list[list[Entry]], work: Path) -> list[LayerIndex]:
    work.mkdir(parents=True, exist_ok=True)
    found = []
    for number, layer in enumerate(layers):
        tar = write_layer(layer, work / f"{number}.tar")
        digest = digest_bytes(tar.read_bytes())
        entries = tuple(scan_tar(tar, layer=digest))
        found.append(LayerIndex(digest, "none", tar.stat().st_size, entries))
    return found


def sources_of(indexes: Sequence[LayerIndex]) -> tuple[str, ...]:
    return tuple(f"index of {index.digest}" for index in indexes)


def mount_tree(layers_dir: Path, indexes: Indexes, sources: Sequence[str] = ()) -> LowerTree:
    digests = [index.digest for index in indexes.indexes]
    return mapped.mount_tree(
        layers_dir, digests, indexes, sources=sources or sources_of(indexes.indexes)
    )


def fields(entry: pyfuse3.EntryAttributes) -> tuple[Any, ...]:
    return tuple(getattr(entry, name) for name in ATTRIBUTE_FIELDS)


async def everything(ops: ReadOnlyOperations, max_ino: int) -> list[Any]:
    """Every answer of ``ops`` to every request a mount of the tree can get, in order."""
    answers: list[Any] = []
    for ino in range(1, max_ino + 2):  # one past the last: a stale inode
        try:
            entry = await ops.getattr(pyfuse3.InodeT(ino), CTX)
        except pyfuse3.FUSEError as error:
            answers.append(("getattr", ino, error.errno))
            continue
        answers.append(("getattr", ino, fields(entry)))
        xattrs = await ops.listxattr(pyfuse3.InodeT(ino), CTX)
        answers.append(("listxattr", ino, list(xattrs)))
        for key in xattrs:
            answers.append(("getxattr", key, await ops.getxattr(pyfuse3.InodeT(ino), key, CTX)))
        if stat.S_ISLNK(entry.st_mode):
            answers.append(("readlink", await ops.readlink(pyfuse3.InodeT(ino), CTX)))
        if stat.S_ISREG(entry.st_mode):
            # The whole file, a piece across its middle and past its end: bytes, not just sizes.
            size = entry.st_size
            for off, length in ((0, size + 1), (size // 2, 4097), (size + 1, 10)):
                got = await ops.read(pyfuse3.FileHandleT(ino), off, length)
                answers.append(("read", ino, off, digest_bytes(got)))
        if stat.S_ISDIR(entry.st_mode):
            listing = await readdir(ops, ino, 0)
            answers.append(("readdir", ino, listing))
            for start in range(1, len(listing) + 1):
                answers.append(("readdir from", start, await readdir(ops, ino, start)))
            for name, *_ in listing:
                found = await ops.lookup(pyfuse3.InodeT(ino), pyfuse3.FileNameT(name), CTX)
                answers.append(("lookup", ino, name, fields(found)))
            for absent in (b"absent", b"\xff\xfe", listing[-1][0] + b"~"):
                found = await ops.lookup(pyfuse3.InodeT(ino), pyfuse3.FileNameT(absent), CTX)
                answers.append(("lookup", ino, absent, found.st_ino))
    stats = await ops.statfs(CTX)
    answers.append(("statfs", stats.f_blocks, stats.f_files, stats.f_namemax))
    return answers


async def readdir(ops: ReadOnlyOperations, ino: int, start: int) -> list[Any]:
    found: list[Any] = []
    original = pyfuse3.readdir_reply

    def reply(
        token: pyfuse3.ReaddirToken, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int
    ) -> bool:
        found.append((name, fields(attr), next_id))
        return True

    pyfuse3.readdir_reply = reply
    try:
        await ops.readdir(pyfuse3.FileHandleT(ino), start, cast(pyfuse3.ReaddirToken, None))
    finally:
        pyfuse3.readdir_reply = original
    return found


def chunks() -> ChunkCache:
    return cast(ChunkCache, None)  # no file is read here: lookups, attributes and listings


class LayerTars:
    """What ``ChunkCache.read`` gives, from the layers' tar files: every range asked, recorded.

    A stand-in for the cache, not the thing under test: the tree is, by the
    ranges its data descriptions make a read ask for.
    """

    def __init__(self, tars: dict[Digest, Path]) -> None:
        self.tars = tars
        self.asked: list[tuple[Digest, int, int]] = []

    async def read(self, digest: Digest, offset: int, length: int) -> bytes:
        self.asked.append((digest, offset, length))
        with self.tars[digest].open("rb") as tar:
            tar.seek(offset)
            return tar.read(length)


def image_indexes(case: str, work: Path) -> tuple[list[LayerIndex], dict[Digest, Path]]:
    """The indexes of a conformance case, or of a layer of sparse files, and their tars."""
    if case == "sparse":
        tar = sparse.gnu_tar(sparse.make_tree(work / "src"), work / "sparse.tar", "1.0")
        digest = digest_bytes(tar.read_bytes())
        entries = tuple(scan_tar(tar, layer=digest))
        return [LayerIndex(digest, "none", tar.stat().st_size, entries)], {digest: tar}
    indexes = case_indexes(CASES[case], work)
    return indexes, {index.digest: work / f"{n}.tar" for n, index in enumerate(indexes)}


@pytest.mark.parametrize("case", [*sorted(CASES), "sparse"])
def test_the_mapped_tree_answers_as_the_merged_tree(case: str, tmp_path: Path) -> None:
    found, tars = image_indexes(case, tmp_path / "tars")
    indexes = Indexes(found)
    merged = merge(indexes.indexes)
    served = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(served, PackedTree)  # mapped, not the merged tree in memory
    assert served.max_ino() == max(merged.inodes)
    # Each inode whole, its data description too: layer, tar offset, size, sparse extents.
    assert [served.inode(ino) for ino in merged.inodes] == list(merged.inodes.values())
    assert any(inode.data is not None for inode in merged.inodes.values())
    ours, theirs = LayerTars(tars), LayerTars(tars)
    mine = trio.run(everything, ReadOnlyOperations(served, cast(Any, ours)), served.max_ino())
    other = trio.run(everything, ReadOnlyOperations(merged, cast(Any, theirs)), served.max_ino())
    assert mine == other
    assert ours.asked == theirs.asked and ours.asked
    # The next mount maps the kept file: nothing merged.
    again = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(again, PackedTree) and indexes.calls == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_writable_view_over_the_mapped_tree_is_the_same(case: str, tmp_path: Path) -> None:
    indexes = Indexes(case_indexes(CASES[case], tmp_path / "tars"))
    views = {}
    for name, tree in (("merged", merge(indexes.indexes)), ("mapped", None)):
        served = tree if tree is not None else mount_tree(tmp_path / "layers", indexes)
        upper, work = tmp_path / name / "upper", tmp_path / name / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        state = UpperState(served, upper, work, reader=cast(Any, None))
        nodes: list[tuple[Any, ...]] = []
        for ino in range(1, state.tree.max_ino() + 1):
            node = state.node(ino)
            lower_path = state.lower_path(node) if ino != ROOT_INO else b"/"
            nodes.append((node.ino, node.mode, node.nlink, node.size, node.target, node.xattrs))
            nodes.append((node.names, node.children, node.subdirs, lower_path, node.lower))
        views[name] = (nodes, next(state._numbers))
        os.close(state._root)
    assert views["mapped"] == views["merged"]


def layers_of(tmp_path: Path) -> tuple[Indexes, MergedTree]:
    layers = [[Entry("etc", "dir"), Entry("etc/passwd", data=b"root\n")]]
    indexes = Indexes(case_indexes(layers, tmp_path / "tars"))
    return indexes, merge(indexes.indexes)


def kept_file(tmp_path: Path, indexes: Indexes, sources: Sequence[str] = ()) -> Path:
    digests = [i.digest for i in indexes.indexes]
    return mapped.packed_path(tmp_path / "layers", digests, sources or sources_of(indexes.indexes))


def flip_bit(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x10]) + raw[at + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw[:10], id="cut-in-its-header"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: flip_bit(raw, len(raw) - 3), id="bit-flipped-in-strings"),
        pytest.param(lambda raw: flip_bit(raw, 200), id="bit-flipped-in-sections"),
        pytest.param(lambda raw: flip_bit(raw, 9), id="bit-flipped-in-version"),
        pytest.param(lambda raw: raw + b"\0" * 8, id="grown"),
    ],
)
def test_a_damaged_packed_file_is_refused_and_built_again(
    tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    indexes, merged = layers_of(tmp_path)
    first = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(first, PackedTree)
    first.close()
    path = kept_file(tmp_path, indexes)
    whole = path.read_bytes()
    path.write_bytes(damage(whole))
    served = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(served, PackedTree)
    assert "building the packed tree again" in caplog.text
    assert path.read_bytes() == whole  # written anew, the same tree
    passwd = served.lookup(served.lookup(ROOT_INO, b"etc") or InodeNo(0), b"passwd")
    assert passwd is not None and served.inode(passwd) == merged.inodes[passwd]


def test_a_packed_file_of_other_code_is_stale_and_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexes, _ = layers_of(tmp_path)
    monkeypatch.setattr(mapped, "_WRITER", "an older writer")
    mount_tree(tmp_path / "layers", indexes)
    path = kept_file(tmp_path, indexes)
    before = path.read_bytes()
    monkeypatch.undo()
    served = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(served, PackedTree)
    assert served.built_from == mapped.built_from(
        [i.digest for i in indexes.indexes], sources_of(indexes.indexes)
    )
    # Packed again from the kept merged tree, and replaced in place: the file of
    # the older code is not left beside the new one.
    assert path.read_bytes() != before and indexes.calls == 1
    assert mapped.packed_files(tmp_path / "layers", [i.digest for i in indexes.indexes]) == [path]


def test_indexes_of_two_sources_keep_a_packed_file_each(tmp_path: Path) -> None:
    # A chain mounted from a published index while a background fetch makes a local one.
    indexes = Indexes(case_indexes(CASES["types"], tmp_path / "tars"))
    digests = [i.digest for i in indexes.indexes]
    published = tuple(f"published index of {d}" for d in digests)
    local = tuple(f"local index of {d}" for d in digests)
    files = {}
    for sources in (published, local):
        served = mount_tree(tmp_path / "layers", indexes, sources)
        assert isinstance(served, PackedTree)
        assert served.built_from == mapped.built_from(digests, sources)
        files[sources] = (served.path, served.path.stat().st_ino)
    assert indexes.calls == 2 and files[published][0] != files[local][0]
    assert mapped.packed_files(tmp_path / "layers", digests) == sorted(
        path for path, _ in files.values()
    )
    # Mounts of either, in turn, map their own file as it is: nothing merged or written again.
    for sources in (published, local, published, local):
        served = mount_tree(tmp_path / "layers", indexes, sources)
        assert isinstance(served, PackedTree)
        assert (served.path, served.path.stat().st_ino) == files[sources]
        served.close()
    assert indexes.calls == 2


def test_a_mapping_keeps_reading_the_file_it_opened_when_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    indexes, merged = layers_of(tmp_path)
    monkeypatch.setattr(mapped, "_WRITER", "an older writer")
    first = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(first, PackedTree)
    monkeypatch.undo()
    second = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(second, PackedTree) and first.built_from != second.built_from
    assert first.path == second.path  # the one file, replaced under the first mapping
    assert [first.inode(i) for i in range(1, 4)] == [
        merged.inodes.get(InodeNo(i)) for i in (1, 2, 3)
    ]


def test_a_store_that_cannot_hold_the_file_still_mounts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    indexes, merged = layers_of(tmp_path)
    path = kept_file(tmp_path, indexes)
    path.parent.parent.mkdir(parents=True)
    path.parent.write_text("a file where the packed trees' directory goes")
    served = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(served, MergedLower) and served.merged.inodes == merged.inodes
    assert "serving the merged tree from memory" in caplog.text


def test_the_kept_tree_is_packed_without_merging_again(tmp_path: Path) -> None:
    indexes, _ = layers_of(tmp_path)
    served = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(served, PackedTree)
    kept_file(tmp_path, indexes).unlink()  # the marshal file stays
    assert mapped.tree_kept(tmp_path / "layers", [i.digest for i in indexes.indexes])
    again = mount_tree(tmp_path / "layers", indexes)
    assert isinstance(again, PackedTree) and indexes.calls == 1


def test_the_attributes_a_mount_keeps_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(read_only, "ATTRIBUTES_KEPT", 50)
    entries = [
        IndexEntry(("d", f"f{n:04}"), Kind.FILE, 0o644, size=0, offset=0) for n in range(400)
    ]
    index = LayerIndex(
        Digest("sha256:" + "a" * 64), "none", 0, (IndexEntry(("d",), Kind.DIR, 0o755), *entries)
    )
    indexes = Indexes([index])
    ops = ReadOnlyOperations(mount_tree(tmp_path / "layers", indexes), chunks())

    async def walk() -> int:
        most = 0
        directory = (
            await ops.lookup(pyfuse3.InodeT(ROOT_INO), pyfuse3.FileNameT(b"d"), CTX)
        ).st_ino
        listing = await readdir(ops, directory, 0)
        for name, *_ in listing[2:]:
            await ops.lookup(directory, pyfuse3.FileNameT(name), CTX)
            most = max(most, len(ops._attributes))
        return most

    assert trio.run(walk) <= 50


def test_trees_are_made_with_the_collector_held_off_and_it_is_on_again_after(
    tmp_path: Path,
) -> None:
    # Merging or packing a big image under the cyclic collector rescans the tree made so far.
    indexes, _ = layers_of(tmp_path)
    collecting: list[bool] = []

    def load() -> list[LayerIndex]:
        collecting.append(gc.isenabled())
        return indexes()

    def refused() -> list[LayerIndex]:
        raise BadImage("a layer the merge refuses")

    digests = [i.digest for i in indexes.indexes]
    assert gc.isenabled()
    served = mapped.mount_tree(tmp_path / "a", digests, load, sources=sources_of(indexes.indexes))
    assert isinstance(served, PackedTree) and collecting == [False] and gc.isenabled()
    with pytest.raises(BadImage):
        mapped.mount_tree(tmp_path / "b", digests, refused, sources=sources_of(indexes.indexes))
    assert gc.isenabled()
