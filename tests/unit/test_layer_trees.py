"""The copy backend and the merged FUSE tree make one tree of the same layers.

An index not built here cannot bring overlayfs' own xattrs into the merged
tree, nor so into a writable mount's upper directory.

Small images where they once differed, each compared whole (``tests.support.tree``'s
digest: kinds, modes, owners, contents, targets, devices, mtimes, xattrs,
hardlinks), in-process: ``backends.apply`` into a directory against the
merged tree of the layers' indexes.  Owners and devices need root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import LocalTars
from lazyfs.fs.upper import Upper
from lazyfs.index.model import IndexEntry, Kind, LayerIndex
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import Digest
from providers.errors import BadImage
from tests.support.layer_trees import copy_tree, fuse_tree
from tests.support.tar_members import ROOT_ONLY, Member, dir_, hard, layer, reg, sym
from tests.support.tree import diff_trees


def image(*layers: list[Member]) -> list[bytes]:
    return [layer(*members).getvalue() for members in layers]


CASES = {
    "directories-without-headers": image([reg("a/b/f", b"x"), dir_("c"), reg("c/d/e")]),
    "a-directory-without-a-header-over-one-with": image(
        [dir_("a", mode=0o700, mtime=5)], [reg("a/b/f")]
    ),
    "markers-through-a-symlink-the-layer-makes": image(
        [dir_("d"), reg("d/x"), reg("d/y")],
        [sym("s", "d"), reg("s/.wh.x"), reg("s/.wh..wh..opq")],
    ),
    "a-marker-then-a-symlink-on-its-path": image(
        [dir_("d"), reg("d/x"), dir_("e"), reg("e/x")],
        [reg("s/.wh.x"), sym("s", "d")],
    ),
    "a-marker-after-its-parent-became-a-directory": image(
        [dir_("d"), reg("d/x"), sym("s", "d")],
        [dir_("s"), reg("s/.wh.x"), reg("d/.wh.x")],
    ),
}


@ROOT_ONLY
@pytest.mark.parametrize("case", sorted(CASES))
def test_copy_and_fuse_make_one_tree(case: str, tmp_path: Path) -> None:
    layers = CASES[case]
    copied = copy_tree(layers, tmp_path / "copy")
    merged = fuse_tree(layers, tmp_path / "fuse")
    differences = diff_trees(copied, merged)
    assert differences == [], "\n".join(differences)


OVERLAY_XATTRS = (("trusted.overlay.opaque", b"y"), ("trusted.overlay.redirect", b"/etc"))


def foreign_index() -> LayerIndex:
    """An index not built here, carrying what no layer entry may bring."""
    kept = (("user.a", b"1"),)
    entries = (
        IndexEntry(("d",), Kind.DIR, mode=0o755, xattrs=OVERLAY_XATTRS + kept),
        IndexEntry(("d", "f"), Kind.FILE, mode=0o644, xattrs=OVERLAY_XATTRS + kept),
    )
    return LayerIndex(Digest("sha256:" + "0" * 64), "none", 0, entries)


@ROOT_ONLY
def test_overlay_xattrs_reach_neither_the_tree_nor_the_upper(tmp_path: Path) -> None:
    tree = merge([foreign_index()])
    d = tree.lookup(ROOT_INO, b"d")
    assert d is not None
    f = tree.lookup(d, b"f")
    assert f is not None
    for ino in (d, f):
        assert tree.inodes[ino].xattrs == ((b"user.a", b"1"),)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    state = Upper(tree, upper, work, LocalTars({}))
    state.set_mode(state.node(f), 0o600)  # a metadata-only copy-up of d/f, and of d
    for path in (upper / "d", upper / "d" / "f"):
        names = set(os.listxattr(path))
        assert "user.a" in names
        assert not names & {name for name, _ in OVERLAY_XATTRS}


@ROOT_ONLY
@pytest.mark.parametrize("split", [False, True], ids=["one-layer", "two-layers"])
def test_a_hardlink_replacing_the_directory_of_its_target_is_refused(
    tmp_path: Path, split: bool
) -> None:
    members = [dir_("a"), reg("a/b", b"x"), hard("a", "a/b")]
    layers = image(members[:2], members[2:]) if split else image(members)
    for build in (copy_tree, fuse_tree):
        with pytest.raises(BadImage, match="inside what it replaces"):
            build(layers, tmp_path / build.__name__)


def test_a_marker_keeps_the_time_of_a_directory_it_empties_on_the_way(tmp_path: Path) -> None:
    layers = image(
        [dir_("b", mtime=7), reg("b/a", b"x"), dir_("b/c", mtime=9)],
        [reg("b/c/new"), reg(".wh..wh..opq")],
    )
    copied = copy_tree(layers, tmp_path / "copy")
    assert sorted(copied) == ["b", "b/c", "b/c/new"]
    assert copied["b"].mtime_ns == 7 * 10**9
    assert diff_trees(copied, fuse_tree(layers, tmp_path / "fuse")) == []
