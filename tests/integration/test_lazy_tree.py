"""The merged tree of the layer indexes equals what ``umoci unpack`` makes.

No mount: the tree is described straight from ``lazyfs.tree.merge`` in the form of
``tests.support.tree.tree_digest`` (file contents read through the indexes' offsets)
and compared with the digest of umoci's rootfs, for every conformance case.
Inode numbers are stable: merging the same image twice numbers it the same.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import TarRangeReader, open_layers
from lazyfs.index.model import Kind, LayerIndex
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree, merge
from providers.digest import Digest
from tests.support import images
from tests.support.backend_cases import CASES
from tests.support.backend_variants import IGNORED_XATTRS
from tests.support.tree import _KINDS, Node, diff_trees, tree_digest

pytestmark = pytest.mark.integration
HIDING = (Kind.WHITEOUT, Kind.OPAQUE)


def layer_blobs(layout: Path, tag: str) -> list[tuple[Digest, Path]]:
    return [(Digest(digest), path) for digest, path in images.layer_paths(layout, tag)]


def indexes_of(layout: Path, tag: str, store: Path) -> tuple[list[LayerIndex], TarRangeReader]:
    layers, tmp = store / "layers", store / "tmp"
    layers.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(exist_ok=True)
    found, tars = [], {}
    for digest, blob in layer_blobs(layout, tag):
        index = ensure_index(layers, tmp, digest, blob)
        found.append(index)
        tars[digest] = check_data_present(layers, blob, index)
    return found, open_layers(tars)


def describe(tree: MergedTree, tars: TarRangeReader) -> dict[str, Node]:
    """``tree`` as ``tests.support.tree.tree_digest`` would describe it once mounted."""
    paths: dict[str, InodeNo] = {}

    def walk(ino: InodeNo, prefix: str) -> None:
        for name, child in tree.children[ino]:
            path = prefix + os.fsdecode(name)
            paths[path] = child
            if child in tree.children:
                walk(child, path + "/")

    walk(ROOT_INO, "")
    groups: dict[InodeNo, list[str]] = {}
    for path, ino in paths.items():
        if ino not in tree.children:
            groups.setdefault(ino, []).append(path)
    nodes = {}
    for path, ino in paths.items():
        inode = tree.inodes[ino]
        kind = _KINDS[stat.S_IFMT(inode.mode)]
        sha = None
        if inode.data is not None:
            data = tars.read_range(inode.data.digest, inode.data.offset, inode.data.size)
            sha = hashlib.sha256(data).hexdigest()
        elif kind == "file":
            sha = hashlib.sha256(b"").hexdigest()
        group = groups.get(ino, [])
        nodes[path] = Node(
            kind=kind,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size if kind in ("file", "symlink") else None,
            sha256=sha,
            target=os.fsdecode(inode.target) if kind == "symlink" else None,
            rdev=(os.major(inode.rdev), os.minor(inode.rdev))
            if kind in ("char", "block")
            else None,
            mtime_ns=inode.mtime_ns,
            xattrs=tuple(
                sorted(
                    (os.fsdecode(k), v)
                    for k, v in inode.xattrs
                    if not os.fsdecode(k).startswith(IGNORED_XATTRS)
                )
            ),
            hardlinks=tuple(sorted(group)) if len(group) > 1 else (),
        )
    return nodes


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per case: its OCI layout and umoci's rootfs of it."""
    if os.geteuid() != 0:
        pytest.skip("umoci unpack of device nodes needs root")
    work = tmp_path_factory.mktemp("lazy-tree")
    out = {}
    for name, layers in CASES.items():
        layout = images.build_oci_image(work / name, layers, "latest")
        out[name] = (layout, images.umoci_unpack(layout, "latest", work / name / "bundle"))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_merged_tree_equals_umoci_unpack(
    case: str, built: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    layout, reference = built[case]
    indexes, tars = indexes_of(layout, "latest", tmp_path / "store")
    tree = merge(indexes)
    expected = tree_digest(reference, ignore_xattrs=IGNORED_XATTRS)
    differences = diff_trees(expected, describe(tree, tars))
    assert differences == [], "\n".join(differences)


def test_link_counts_and_stable_inode_numbers(
    built: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    layout, _ = built["rich"]
    indexes, _ = indexes_of(layout, "latest", tmp_path / "store")
    tree = merge(indexes)
    assert merge(indexes) == tree
    usr = tree.lookup(ROOT_INO, b"usr")
    assert usr is not None
    usr_bin = tree.lookup(usr, b"bin")
    assert usr_bin is not None
    prog = tree.lookup(usr_bin, b"prog")
    assert prog is not None and prog == tree.lookup(usr_bin, b"prog-link")
    assert tree.inodes[prog].nlink == 3
    root = tree.inodes[ROOT_INO]
    subdirs = sum(1 for _, ino in tree.children[ROOT_INO] if ino in tree.children)
    assert stat.S_ISDIR(root.mode) and root.nlink == 2 + subdirs
    assert tree.lookup(ROOT_INO, b"missing") is None


def test_the_comparison_catches_a_broken_merge(
    built: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    layout, reference = built["rich"]
    indexes, tars = indexes_of(layout, "latest", tmp_path / "store")
    # A bug: whiteout and opaque markers do nothing.
    without_markers = [
        replace(index, entries=tuple(e for e in index.entries if e.kind not in HIDING))
        for index in indexes
    ]
    differences = diff_trees(
        tree_digest(reference, ignore_xattrs=IGNORED_XATTRS),
        describe(merge(without_markers), tars),
    )
    assert "etc/remove-me: only in b (file 0o100644 0:0 size=18)" in differences
    assert any(line.startswith("srv/www: only in b") for line in differences)
