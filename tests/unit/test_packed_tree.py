"""Packed trees answer exactly as the merged trees they were written from, and refuse damage.

Every image of the conformance cases (``tests.support.backend_cases``), the
sparse layers of ``tests.support.sparse`` in GNU tar's four forms, and
random layer stacks (Hypothesis) are merged, packed, opened and asked
everything a mount asks: each inode whole (attributes, target, xattrs,
data reference), every listing in order and from every readdir offset,
lookups of present and absent names, parents, the names of each inode, the
data block count.  A file cut short, a bit flipped in any part, another
format version and another ``built_from`` are each refused at open.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import struct
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from lazyfs.index.build import scan_tar
from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.tree import packed as fmt
from lazyfs.tree.lower import MergedLower, stat_of
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree, merge
from lazyfs.tree.packed_read import PackedTree, TreeReader
from lazyfs.tree.packed_write import write_packed
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from tests.support import sparse
from tests.support.backend_cases import CASES
from tests.support.images import Entry, write_layer

BUILT_FROM = ("sha256:" + "1" * 64, "sha256:" + "2" * 64, "rules:0123456789abcdef")


def indexes_of(layers: Sequence[Path]) -> list[LayerIndex]:
    found = []
    for tar in layers:
        digest = digest_bytes(tar.read_bytes())
        entries = scan_tar(tar, layer=str(digest))
        found.append(LayerIndex(digest, "none", tar.stat().st_size, entries))
    return found


def case_tree(layers: list[list[Entry]], work: Path) -> MergedTree:
    work.mkdir(parents=True, exist_ok=True)
    tars = [write_layer(entries, work / f"{n}.tar") for n, entries in enumerate(layers)]
    return merge(indexes_of(tars))


def packed(tree: MergedTree, path: Path) -> PackedTree:
    write_packed(tree, BUILT_FROM, path)
    return PackedTree.open(path, BUILT_FROM)


def lower_names(tree: MergedTree) -> dict[InodeNo, list[tuple[InodeNo, bytes]]]:
    """The names of every inode as a writable mount collects them from a merged tree."""
    names: dict[InodeNo, list[tuple[InodeNo, bytes]]] = {}
    for parent, listing in tree.children.items():
        for name, child in listing:
            names.setdefault(child, []).append((parent, name))
    return names


def absent_names(listing: Sequence[tuple[bytes, InodeNo]]) -> list[bytes]:
    present = {name for name, _ in listing}
    candidates = [b"", b"\x00", b"~~~~", b"\xff\xfe", "é".encode(), b"\x80", b"..", b"."]
    for name, _ in listing:
        candidates += (name + b"\x00", name[:-1], b"!" + name, name + b"~")
    return [name for name in candidates if name not in present]


def assert_same(got: PackedTree, tree: MergedTree) -> None:
    count = len(tree.inodes)
    assert len(got.inodes) == len(got) == count
    assert list(got.inodes) == sorted(tree.inodes)
    merged = MergedLower(tree)
    for ino, inode in tree.inodes.items():
        assert got.inodes[ino] == inode
        assert got.inode(ino) == inode
        assert got.stat(ino) == merged.stat(ino) == stat_of(inode)
    for missing in (0, -1, count + 1, count + 1000):
        assert got.inode(missing) is None
        assert got.stat(missing) is None
        assert merged.stat(missing) is None
        assert got.inodes.get(InodeNo(missing)) is None
        assert InodeNo(missing) not in got.inodes
        assert got.lookup(InodeNo(missing), b"x") is None
    assert set(got.children) == set(tree.children)
    assert len(got.children) == len(tree.children)
    assert dict(got.parents) == tree.parents
    for directory, listing in tree.children.items():
        assert got.children[directory] == listing
        assert got.child_count(directory) == len(listing)
        for start in range(len(listing) + 2):
            assert list(got.entries(directory, start)) == list(listing[start:])
        for name, child in listing:
            assert got.lookup(directory, name) == tree.lookup(directory, name) == child
        for name in absent_names(listing):
            assert got.lookup(directory, name) is None
            assert tree.lookup(directory, name) is None
    for ino in tree.inodes:
        if ino not in tree.children:
            assert ino not in got.children
            assert got.children.get(ino) is None
            assert got.parents.get(ino) is None
            assert got.lookup(ino, b"anything") is None
            with pytest.raises(KeyError):
                got.child_count(ino)
    names = lower_names(tree)
    for ino in tree.inodes:
        assert list(got.names_of(ino)) == names.get(ino, [])
    blocks = sum((i.size + 4095) // 4096 for i in tree.inodes.values() if i.data is not None)
    assert got.data_blocks() == blocks


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_conformance_image_reads_back_the_same(case: str, tmp_path: Path) -> None:
    tree = case_tree(CASES[case], tmp_path / "layers")
    with packed(tree, tmp_path / "tree") as got:
        assert got.built_from == BUILT_FROM
        assert_same(got, tree)
        readers: list[TreeReader] = [tree, got]  # one type for the FUSE operations (mypy)
        assert [r.lookup(ROOT_INO, b"\0") for r in readers] == [None, None]


@pytest.mark.parametrize("form", sparse.FORMS)
def test_sparse_files_keep_their_extents(form: str, tmp_path: Path) -> None:
    source = sparse.make_tree(tmp_path / "src")
    tree = merge(indexes_of([sparse.gnu_tar(source, tmp_path / "layer.tar", form)]))
    extents = [i.data.extents for i in tree.inodes.values() if i.data is not None]
    assert () in extents and any(e is None for e in extents)  # all-hole and plain files
    assert any(e is not None and len(e) > 100 for e in extents)
    with packed(tree, tmp_path / "tree") as got:
        assert_same(got, tree)


def test_names_that_are_not_utf8_are_found_in_merge_order(tmp_path: Path) -> None:
    # "é" sorts before "\udc80" as text, but its bytes sort after b"\x80".
    names = ["a", "é", "\udc80", "\udcff", "z", "\U0001f600"]
    layer = [IndexEntry(("d",), Kind.DIR, 0o755)]
    layer += [IndexEntry(("d", name), Kind.FILE, 0o644, size=1, offset=512) for name in names]
    layer += [IndexEntry(("plain", name), Kind.FIFO, 0o644) for name in ("b", "a")]
    tree = merge([LayerIndex(Digest("sha256:" + "a" * 64), "none", 0, tuple(layer))])
    directory = tree.lookup(ROOT_INO, b"d")
    assert directory is not None
    listed = [name for name, _ in tree.children[directory]]
    assert listed != sorted(listed)  # the case the text order is for
    with packed(tree, tmp_path / "tree") as got:
        assert_same(got, tree)


# -- refusals ------------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A packed tree with something in every section: the types case and a sparse layer."""
    (tmp_path / "layers").mkdir()
    tars = [write_layer(e, tmp_path / "layers" / f"{n}.tar") for n, e in enumerate(CASES["types"])]
    source = sparse.make_tree(tmp_path / "src")
    tars.append(sparse.gnu_tar(source, tmp_path / "layers" / "sparse.tar", "1.0"))
    path = tmp_path / "tree"
    write_packed(merge(indexes_of(tars)), BUILT_FROM, path)
    with PackedTree.open(path, BUILT_FROM):
        pass
    return path


def sections(path: Path) -> dict[fmt.Section, tuple[int, int]]:
    raw = path.read_bytes()
    header = fmt.parse_header(raw[: fmt.PRELUDE], len(raw), path)
    return dict(zip(fmt.Section, header.sections, strict=True))


def flip(path: Path, offset: int, bit: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_every_section_of_the_damage_tests_holds_something(written: Path) -> None:
    assert all(length for length in sections(written).values()), sections(written)


@pytest.mark.parametrize("keep", [0, 1, 15, fmt.PRELUDE - 1, fmt.PRELUDE, 0.5, -8, -1])
def test_a_truncated_file_is_refused(written: Path, keep: int | float) -> None:
    raw = written.read_bytes()
    cut = int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw) if keep < 0 else keep
    written.write_bytes(raw[:cut])
    with pytest.raises(fmt.DamagedPackedTree, match=r"truncated|bytes where its header says"):
        PackedTree.open(written, BUILT_FROM)


def test_a_file_grown_at_its_end_is_refused(written: Path) -> None:
    with written.open("ab") as out:
        out.write(b"\0" * 8)
    with pytest.raises(fmt.DamagedPackedTree, match="bytes where its header says"):
        PackedTree.open(written, BUILT_FROM)


@pytest.mark.parametrize("section", list(fmt.Section), ids=lambda s: s.name)
def test_a_flipped_bit_in_any_section_is_refused(written: Path, section: fmt.Section) -> None:
    offset, length = sections(written)[section]
    original = written.read_bytes()
    for where in sorted({offset, offset + length // 2, offset + length - 1}):
        for bit in range(8):
            flip(written, where, bit)
            with pytest.raises(fmt.DamagedPackedTree, match="checksum"):
                PackedTree.open(written, BUILT_FROM)
            written.write_bytes(original)


def test_a_flipped_bit_in_the_header_is_refused(written: Path) -> None:
    original = written.read_bytes()
    for where in range(fmt.PRELUDE):
        flip(written, where, where % 8)
        with pytest.raises(fmt.PackedTreeRefused):
            PackedTree.open(written, BUILT_FROM)
        written.write_bytes(original)


def test_another_format_version_is_refused_as_stale(written: Path) -> None:
    raw = bytearray(written.read_bytes())
    struct.pack_into("<I", raw, 8, fmt.VERSION + 1)  # before the checksummed part
    written.write_bytes(bytes(raw))
    with pytest.raises(fmt.StalePackedTree, match=f"format version {fmt.VERSION + 1}"):
        PackedTree.open(written, BUILT_FROM)


def test_a_section_table_outside_the_file_is_refused_even_with_a_good_checksum(
    written: Path,
) -> None:
    raw = bytearray(written.read_bytes())
    where = fmt.HEADER.size + fmt.SECTION.size * fmt.Section.STRINGS
    struct.pack_into("<Q", raw, where + 8, len(raw))  # STRINGS' length
    struct.pack_into("<I", raw, 12, zlib.crc32(raw[fmt.CHECKED_FROM :]))
    written.write_bytes(bytes(raw))
    with pytest.raises(fmt.DamagedPackedTree, match="STRINGS lies outside the file"):
        PackedTree.open(written, BUILT_FROM)


@pytest.mark.parametrize(
    "expected",
    [(), BUILT_FROM[:-1], (*BUILT_FROM, "more"), BUILT_FROM[::-1], ("sha256:" + "3" * 64,)],
)
def test_a_tree_built_from_something_else_is_refused_as_stale(
    written: Path, expected: tuple[str, ...]
) -> None:
    with pytest.raises(fmt.StalePackedTree, match="built from"):
        PackedTree.open(written, expected)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
    written: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = written.read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    tree = merge([LayerIndex(Digest("sha256:" + "a" * 64), "none", 0, ())])
    with pytest.raises(OSError, match="No space"):
        write_packed(tree, ("other",), written)
    assert written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir()) == ["layers", "src", "tree"]


def small_tree() -> MergedTree:
    layer = (
        IndexEntry(("d",), Kind.DIR, 0o755),
        IndexEntry(("d", "f"), Kind.FILE, 0o644, size=3, offset=512),
        IndexEntry(("d", "g"), Kind.FILE, 0o644, size=3, offset=1024),
    )
    return merge([LayerIndex(Digest("sha256:" + "a" * 64), "none", 0, layer)])


def _unsorted(tree: MergedTree) -> MergedTree:
    children = dict(tree.children)
    children[InodeNo(2)] = children[InodeNo(2)][::-1]
    return dataclasses.replace(tree, children=children)


def _gap(tree: MergedTree) -> MergedTree:
    inodes = dict(tree.inodes)
    inodes[InodeNo(7)] = inodes.pop(InodeNo(4))._replace(ino=InodeNo(7))
    return dataclasses.replace(tree, inodes=inodes)


def _two_payloads(tree: MergedTree) -> MergedTree:
    inodes = dict(tree.inodes)
    inodes[InodeNo(3)] = inodes[InodeNo(3)]._replace(target=b"x")
    return dataclasses.replace(tree, inodes=inodes)


def _stray_listing(tree: MergedTree) -> MergedTree:
    return dataclasses.replace(tree, children={**tree.children, InodeNo(9): ()})


def _unnamed(tree: MergedTree) -> MergedTree:
    children = dict(tree.children)
    children[InodeNo(2)] = children[InodeNo(2)][:1]
    return dataclasses.replace(tree, children=children)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (_unsorted, "not sorted"),
        (_gap, "not 1..n"),
        (_two_payloads, "more than one of"),
        (_unnamed, "has no name"),
        (_stray_listing, "not in the tree"),
    ],
)
def test_a_tree_the_format_cannot_hold_is_refused_before_writing(
    spoil: Callable[[MergedTree], MergedTree], message: str, tmp_path: Path
) -> None:
    write_packed(small_tree(), BUILT_FROM, tmp_path / "tree")
    with pytest.raises(ValueError, match=message):
        write_packed(spoil(small_tree()), BUILT_FROM, tmp_path / "tree")
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


# -- what an open tree holds -------------------------------------------------------------


def wide_tree(files: int) -> MergedTree:
    layer = [IndexEntry((f"d{n}",), Kind.DIR, 0o755) for n in range(10)]
    layer += [
        IndexEntry((f"d{n % 10}", f"file-{n}"), Kind.FILE, 0o644, size=n, offset=512 * n)
        for n in range(files)
    ]
    return merge([LayerIndex(Digest("sha256:" + "b" * 64), "none", 0, tuple(layer))])


def test_what_an_open_tree_holds_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    def held(files: int) -> int:
        path = tmp_path / f"tree-{files}"
        write_packed(wide_tree(files), BUILT_FROM, path)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tree = PackedTree.open(path, BUILT_FROM)
            assert tree.lookup(ROOT_INO, b"d3") is not None
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        tree.close()
        return grown

    small, large = held(10), held(20_000)
    assert large <= small + 1024, (small, large)


# -- random trees ----------------------------------------------------------------------------

NAMES = st.sampled_from(
    ["a", "b", "ab", "é", "\udc80", "\udcff", "Z", "a b", ".hidden", "\U0001f600"]
)
DIGESTS = [Digest("sha256:" + c * 64) for c in "0123456789"]
XATTRS = st.lists(
    st.tuples(st.sampled_from(["user.a", "user.b", "security.capability"]), st.binary(max_size=8)),
    max_size=2,
    unique_by=lambda pair: pair[0],
).map(tuple)
EXTENT = st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 20), st.integers(0, 1 << 40))
LEAF_KINDS = [Kind.FILE, Kind.SYMLINK, Kind.CHAR, Kind.BLOCK, Kind.FIFO, Kind.HARDLINK]


@dataclass(frozen=True)
class Leaf:
    """Anything but a directory; a hardlink names the ``pick``-th file written before it."""

    kind: Kind
    mode: int
    owner: int
    mtime_ns: int
    size: int
    offset: int
    extents: tuple[tuple[int, int, int], ...] | None
    target: str
    rdev: tuple[int, int]
    xattrs: tuple[tuple[str, bytes], ...]
    pick: int


@dataclass(frozen=True)
class Dir:
    mode: int
    owner: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]
    children: dict[str, Leaf | Dir | Kind]  # Kind: a whiteout or an opaque marker


LEAVES = st.builds(
    Leaf,
    kind=st.sampled_from(LEAF_KINDS),
    mode=st.integers(0, 0o7777),
    owner=st.integers(0, (1 << 32) - 2),
    mtime_ns=st.integers(-(1 << 40), 1 << 62),
    size=st.integers(0, 1 << 40),
    offset=st.integers(0, 1 << 50),
    extents=st.none() | st.lists(EXTENT, max_size=3).map(tuple),
    target=st.sampled_from(["a", "/b/c", "", "../x", "é"]),
    rdev=st.tuples(st.integers(0, 4095), st.integers(0, (1 << 20) - 1)),
    xattrs=XATTRS,
    pick=st.integers(0, 100),
)
NODES = st.recursive(
    LEAVES | st.sampled_from([Kind.WHITEOUT, Kind.OPAQUE]),
    lambda inner: st.builds(
        Dir,
        mode=st.integers(0, 0o7777),
        owner=st.integers(0, (1 << 32) - 2),
        mtime_ns=st.integers(-(1 << 40), 1 << 62),
        xattrs=XATTRS,
        children=st.dictionaries(NAMES, inner, max_size=5),
    ),
    max_leaves=40,
)
ROOTS = st.dictionaries(NAMES, NODES, min_size=1, max_size=6)


def layer_entries(root: dict[str, Leaf | Dir | Kind]) -> tuple[IndexEntry, ...]:
    """A layer that writes the tree ``root``: parents first, hardlinks to files written before."""
    entries: list[IndexEntry] = []
    files: list[tuple[str, ...]] = []

    def emit(path: tuple[str, ...], node: Leaf | Dir | Kind) -> None:
        if node is Kind.WHITEOUT:
            entries.append(IndexEntry(path, Kind.WHITEOUT))
        elif node is Kind.OPAQUE:
            entries.append(IndexEntry(path[:-1], Kind.OPAQUE))
        elif isinstance(node, Dir):
            entries.append(
                IndexEntry(
                    path, Kind.DIR, node.mode, node.owner, 7, 0, node.mtime_ns, xattrs=node.xattrs
                )
            )
            for name, child in node.children.items():
                emit((*path, name), child)
        elif isinstance(node, Leaf) and node.kind is Kind.HARDLINK:
            if files:
                entries.append(
                    IndexEntry(path, Kind.HARDLINK, target="/".join(files[node.pick % len(files)]))
                )
        elif isinstance(node, Leaf):
            file = node.kind is Kind.FILE
            entries.append(
                IndexEntry(
                    path,
                    node.kind,
                    node.mode,
                    node.owner,
                    node.owner // 3,
                    node.size if file else 0,
                    node.mtime_ns,
                    target=node.target if node.kind is Kind.SYMLINK else "",
                    rdev=node.rdev if node.kind in (Kind.CHAR, Kind.BLOCK) else (0, 0),
                    xattrs=node.xattrs,
                    offset=node.offset if file else 0,
                    extents=node.extents if file else None,
                )
            )
            if file:
                files.append(path)

    for name, node in root.items():
        emit((name,), node)
    return tuple(entries)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(st.tuples(st.sampled_from(DIGESTS), ROOTS), min_size=1, max_size=4))
def test_random_trees_read_back_the_same(
    layers: list[tuple[Digest, dict[str, Leaf | Dir | Kind]]],
) -> None:
    indexes = [LayerIndex(digest, "none", 0, layer_entries(root)) for digest, root in layers]
    try:
        tree = merge(indexes)
    except BadImage:
        reject()
    with tempfile.TemporaryDirectory() as scratch, packed(tree, Path(scratch) / "t") as got:
        assert_same(got, tree)
