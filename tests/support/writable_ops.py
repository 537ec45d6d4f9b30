"""The copy-on-write FUSE operations over a small two-layer image, in-process.

``make_ops`` indexes LOWER and TOP (``ops_of_layers`` any layers), merges
them and returns the writable operations on the path asked
(``tests.support.fuse_paths``); ``ino`` walks a
path down from the root as the kernel's lookups would, as CTX.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pyfuse3

from lazyfs.blobs.ranges import ChunkCache, open_layers
from lazyfs.fs.upper import Upper
from lazyfs.fs.writable import WritableOperations
from lazyfs.fs.writable_no_open import NoOpenWritableOperations
from lazyfs.index.stored import check_data_present, ensure_index
from lazyfs.tree.merge import ROOT_INO
from providers.digest import digest_bytes
from tests.support import fuse_paths
from tests.support.images import Entry, whiteout, write_layer
from tests.support.kept_trees import served_tree

CTX = cast(pyfuse3.RequestContext, SimpleNamespace(uid=0, gid=0, umask=0o022, pid=1))
BIG = bytes(range(256)) * 4000  # 1 MB

LOWER = [
    Entry("etc", "dir", mode=0o755),
    Entry("etc/passwd", data=b"root\n", xattrs={"user.a": b"1"}),
    Entry("etc/gone", data=b"x"),
    Entry("big", data=BIG),
    Entry("link", "symlink", target="etc"),
    Entry("hard", "hardlink", target="etc/passwd"),
    Entry("d", "dir"),
    Entry("d/x", data=b"dx"),
]
TOP = [whiteout("etc/gone"), Entry("etc/top", data=b"top\n")]


def make_ops(tmp_path: Path, path: str) -> WritableOperations:
    """The writable view of LOWER and TOP on ``path`` (``tests.support.fuse_paths``)."""
    return ops_of_layers(tmp_path, path, [LOWER, TOP])


def ops_of_layers(
    tmp_path: Path, path: str, image: Sequence[Sequence[Entry]]
) -> WritableOperations:
    """The writable view of ``image``'s layers (bottom first) on ``path``."""
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    indexes, tars = [], {}
    for i, entries in enumerate(image):
        blob = write_layer(entries, tmp_path / f"{i}.tar")
        digest = digest_bytes(blob.read_bytes())
        index = ensure_index(layers, tmp, digest, blob)
        indexes.append(index)
        tars[digest] = check_data_present(layers, blob, index)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    source = open_layers(tars)
    # The tree a mount serves: the packed file, mapped.
    view = Upper(served_tree(layers, indexes), upper, work, source)
    if path == fuse_paths.NO_OPEN:
        kernel = fuse_paths.NoOpenKernel(NoOpenWritableOperations(view, ChunkCache(source)))
        return cast(WritableOperations, kernel)
    return WritableOperations(view, ChunkCache(source))


def name(text: str) -> pyfuse3.FileNameT:
    return pyfuse3.FileNameT(text.encode())


async def ino(ops: WritableOperations, path: str) -> pyfuse3.InodeT:
    found = pyfuse3.InodeT(ROOT_INO)
    for part in path.split("/"):
        found = (await ops.lookup(found, name(part), CTX)).st_ino
    return found


# setattr's fields, as the kernel passes them.
setting = fuse_paths.setattr_fields
