"""The merged tree against the model of the layer rules that ``backends.apply`` is held to.

The stacks, the model and the tar writer are ``tests.support.apply_model``'s,
which ``test_apply_model`` uses too, so the merged FUSE tree and the
extracting backends are checked against one statement of the rules: what
the tree shows (names, kinds, file contents, link targets), or the error
class when the stack is refused.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, reject, settings

from lazyfs.index.formats import build_index
from lazyfs.index.model import Kind, LayerIndex
from lazyfs.tree.merge import ROOT_INO, InodeNo, MergedTree, merge
from providers.digest import Digest, digest_bytes
from providers.errors import BadImage
from tests.support.apply_model import (
    DIR,
    Entry,
    Node,
    Path_,
    Unpredictable,
    archive,
    predicted,
    stacks,
)


def shown(tree: MergedTree, tars: dict[Digest, bytes]) -> dict[Path_, Node]:
    found: dict[Path_, Node] = {}

    def visit(ino: InodeNo, prefix: Path_) -> None:
        for name, child in tree.children[ino]:
            key = (*prefix, name.decode())
            inode = tree.inodes[child]
            if child in tree.children:
                found[key] = DIR
                visit(child, key)
            elif inode.data is not None:
                data = tars[inode.data.digest]
                content = data[inode.data.offset : inode.data.offset + inode.data.size]
                found[key] = ("file", content.decode())
            else:
                found[key] = ("link", inode.target.decode())

    visit(ROOT_INO, ())
    return found


def merged(layers: list[list[Entry]]) -> dict[Path_, Node] | type[BadImage]:
    indexes: list[LayerIndex] = []
    tars: dict[Digest, bytes] = {}
    with tempfile.TemporaryDirectory() as scratch:
        try:
            for number, entries in enumerate(layers):
                data = archive(entries).getvalue()
                blob = Path(scratch) / f"layer{number}"
                blob.write_bytes(data)
                # Equal layers are one blob, as in a real store.
                digest = digest_bytes(data)
                indexes.append(build_index(digest, blob, Path(scratch) / "unused"))
                tars[digest] = data
            tree = merge(indexes)
        except BadImage as error:
            return type(error)
    assert all(e.kind is not Kind.HARDLINK for index in indexes for e in index.entries)
    return shown(tree, tars)


@settings(max_examples=200, deadline=None)
@given(stacks(symlinks=True))
def test_markers_first_with_symlinks(layers: list[list[Entry]]) -> None:
    assert merged(layers) == predicted(layers, ordered=True)


@settings(max_examples=200, deadline=None)
@given(stacks(symlinks=False))
def test_markers_anywhere_without_symlinks(layers: list[list[Entry]]) -> None:
    try:
        expected = predicted(layers, ordered=False)
    except Unpredictable:
        reject()
    assert merged(layers) == expected
