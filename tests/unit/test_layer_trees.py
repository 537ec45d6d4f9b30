"""The copy backend and the merged FUSE tree make one tree of the same layers.

Small images where they once differed, each compared whole (``tests.tree``'s
digest: kinds, modes, owners, contents, targets, devices, mtimes, xattrs,
hardlinks), in-process: ``backends.apply`` into a directory against the
merged tree of the layers' indexes.  Owners and devices need root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.layer_trees import copy_tree, fuse_tree
from tests.tree import diff_trees
from tests.unit.test_apply import ROOT_ONLY, Member, dir_, layer, reg, sym


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
