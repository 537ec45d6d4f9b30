"""One image, every backend's tree of it, in-process: for tests that compare them.

An image here is its layers as uncompressed tar bytes, bottom first.  Each
function returns the tree in ``tests.support.tree.tree_digest``'s form, or raises
what the backend raised:

- ``copy_tree``: ``backends.apply`` into a directory (the copy backend);
- ``fuse_tree``: the merged tree of the layers' indexes (``lazyfs.tree.merge``),
  described as ``tree_digest`` would describe the mounted view, without
  mounting: file contents are read at the offsets the index gives
  (``merged_tree_nodes`` describes any merged tree so);
- ``overlay_tree``: the overlay backend's read-only rootfs, mounted, read
  and destroyed (also when reading fails).

``outcome`` runs one of them and turns a ``LazyfsError`` into a verdict.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backends.apply import LayerFile, apply_layers
from backends.overlay import OverlayBackend
from lazyfs.index.build import scan_tar
from lazyfs.index.model import LayerIndex
from lazyfs.tree.merge import ROOT_INO, DataRef, InodeNo, MergedTree, merge
from providers.digest import Digest, digest_bytes
from providers.errors import LazyfsError
from tests.support.blob_sources import LocalFiles
from tests.support.tree import _KINDS, Node, tree_digest

# The host may label files; nothing of the image.
IGNORED_XATTRS = ("security.selinux",)
Tree = dict[str, Node]


def _layer_files(layers: Sequence[bytes], work: Path) -> list[LayerFile]:
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for number, data in enumerate(layers):
        path = work / f"layer{number}.tar"
        path.write_bytes(data)
        files.append(LayerFile(digest_bytes(data), path))
    return files


def copy_tree(layers: Sequence[bytes], work: Path) -> Tree:
    files = _layer_files(layers, work / "blobs")
    root = work / "copy"
    root.mkdir()
    apply_layers(root, files)
    return tree_digest(root, ignore_xattrs=IGNORED_XATTRS)


def fuse_tree(layers: Sequence[bytes], work: Path) -> Tree:
    files = _layer_files(layers, work / "blobs")
    data = {Digest(file.digest): blob for file, blob in zip(files, layers, strict=True)}
    indexes = [
        LayerIndex(file.digest, "none", len(blob), scan_tar(file.path, layer=str(file.digest)))
        for file, blob in zip(files, layers, strict=True)
    ]

    def content(ref: DataRef) -> bytes:
        return data[ref.digest][ref.offset : ref.offset + ref.size]

    return merged_tree_nodes(merge(indexes), content)


def merged_tree_nodes(tree: MergedTree, content: Callable[[DataRef], bytes]) -> Tree:
    """``tree`` as ``tree_digest`` would describe it mounted; ``content`` reads a file's bytes."""
    paths: dict[str, InodeNo] = {}

    def walk(ino: InodeNo, prefix: str) -> None:
        for name, child in tree.children[ino]:
            path = prefix + os.fsdecode(name)
            paths[path] = child
            if child in tree.children:
                walk(child, path + "/")

    walk(ROOT_INO, "")
    names: dict[InodeNo, list[str]] = {}
    for path, ino in paths.items():
        if ino not in tree.children:
            names.setdefault(ino, []).append(path)
    nodes = {}
    for path, ino in paths.items():
        inode = tree.inodes[ino]
        kind = _KINDS[stat.S_IFMT(inode.mode)]
        group = names.get(ino, [])
        nodes[path] = Node(
            kind=kind,
            mode=inode.mode,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size if kind in ("file", "symlink") else None,
            sha256=hashlib.sha256(content(inode.data) if inode.data else b"").hexdigest()
            if kind == "file"
            else None,
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


def overlay_tree(layers: Sequence[bytes], work: Path) -> Tree:
    files = _layer_files(layers, work / "blobs")
    for part in ("layers", "tmp", "containers/rootfses"):
        (work / part).mkdir(parents=True)
    backend = OverlayBackend(work / "layers", work / "tmp")
    rootfs = work / "containers" / "rootfses" / "r"
    try:
        blobs = LocalFiles(files)
        backend.provision(blobs.layers(), blobs, rootfs, writable=False)
        return tree_digest(rootfs, ignore_xattrs=IGNORED_XATTRS)
    finally:
        backend.destroy(rootfs)


@dataclass(frozen=True)
class Outcome:
    """What a backend made of an image: its tree, or the error it gave (class and text)."""

    tree: Tree | None
    error: type[LazyfsError] | None = None
    message: str = ""

    @property
    def accepted(self) -> bool:
        return self.error is None


def outcome(
    build: Callable[[Sequence[bytes], Path], Tree], layers: Sequence[bytes], work: Path
) -> Outcome:
    """``build(layers, work)``, with a refusal as a verdict instead of an exception.

    Only lazyfs' own errors are verdicts; anything else (a traceback) propagates.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # skipped-entry warnings, thousands of them
    try:
        return Outcome(build(layers, work))
    except LazyfsError as error:
        return Outcome(None, type(error), str(error))
    finally:
        logging.disable(previous)
