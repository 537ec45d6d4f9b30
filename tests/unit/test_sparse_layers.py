"""GNU sparse entries, made by GNU tar in its four forms: applied and indexed as GNU tar reads them.

Applying (what copy, bind and overlay do) must give GNU tar's bytes and keep
the holes as holes on disk; the index (what the fuse backend reads through,
plain, gzip and zstd) must serve the same bytes, never the raw tar after a
sparse entry's stored data.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pyfuse3
import pytest
import zstandard

from backends.apply import LayerFile, apply_layers
from lazyfs.blobs.ranges import ChunkCache, open_layers
from lazyfs.fs.read_only import ReadOnlyOperations
from lazyfs.index.stored import check_data_present, ensure_index, index_path, load_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from tests.support import sparse

CTX = cast(pyfuse3.RequestContext, None)
COMPRESSIONS = ("none", "gzip", "zstd")


@dataclass(frozen=True)
class Built:
    tars: dict[str, Path]  # form -> GNU tar's layer
    reference: dict[str, dict[str, bytes]]  # form -> what GNU tar extracts


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("sparse")
    tree = sparse.make_tree(work / "tree")
    tars, reference = {}, {}
    for form in sparse.FORMS:
        tars[form] = sparse.gnu_tar(tree, work / f"{form}.tar", form)
        reference[form] = sparse.regular_files(sparse.gnu_extract(tars[form], work / f"x-{form}"))
    return Built(tars, reference)


def blob(tmp_path: Path, tar: Path, compression: str) -> LayerFile:
    data = tar.read_bytes()
    if compression == "gzip":
        data = gzip.compress(data, compresslevel=1)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    path = tmp_path / f"blob-{compression}"
    path.write_bytes(data)
    return LayerFile(digest_bytes(data), path)


def test_gnu_tar_made_the_sparse_forms(built: Built) -> None:
    """The layers are sparse (or this suite tests nothing), and GNU tar reads them back right."""
    for form, tar in built.tars.items():
        assert tar.stat().st_size < 2 * sparse.MiB, form  # 25 MiB of holes are not in it
        for path in sparse.FILES:
            assert built.reference[form][path] == sparse.expected(path), (form, path)
        assert built.reference[form]["etc/shadow"] == sparse.SECRET


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("form", sparse.FORMS)
def test_apply_gives_gnu_tars_bytes_and_keeps_the_holes(
    built: Built, tmp_path: Path, form: str, compression: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, [blob(tmp_path, built.tars[form], compression)])
    assert sparse.regular_files(root) == built.reference[form]
    # 16 MiB apparent, one block of data: written out, it would take 16 MiB.
    assert sparse.allocated(root / "var/log/lastlog") <= 64 << 10
    assert sparse.allocated(root / "var/lib/all-hole") == 0
    total = sum(sparse.allocated(p) for p in root.rglob("*") if p.is_file())
    assert total <= 2 * sparse.MiB


async def read_all(ops: ReadOnlyOperations, path: str) -> tuple[pyfuse3.EntryAttributes, bytes]:
    ino = pyfuse3.InodeT(ROOT_INO)
    for part in path.split("/"):
        ino = (await ops.lookup(ino, pyfuse3.FileNameT(part.encode()), CTX)).st_ino
    attrs = await ops.getattr(ino, CTX)
    info = await ops.open(ino, os.O_RDONLY, CTX)
    parts, offset = [], 0
    # An odd read size, so reads straddle the edges of data and holes.
    while chunk := await ops.read(info.fh, offset, 100_003):
        parts.append(chunk)
        offset += len(chunk)
    return attrs, b"".join(parts)


async def test_a_sparse_entry_never_reads_the_next_entrys_bytes(
    built: Built, tmp_path: Path
) -> None:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    layer = blob(tmp_path, built.tars["1.0"], "none")
    index = ensure_index(layers, tmp, layer.digest, layer.path)
    data = check_data_present(layers, layer.path, index)
    ops = ReadOnlyOperations(merge([index]), ChunkCache(open_layers({layer.digest: data})))
    ino = (await ops.lookup(pyfuse3.InodeT(ROOT_INO), pyfuse3.FileNameT(b"etc"), CTX)).st_ino
    ino = (await ops.lookup(ino, pyfuse3.FileNameT(b"public"), CTX)).st_ino
    head = await ops.read(pyfuse3.FileHandleT(ino), 0, 64 << 10)
    assert sparse.SECRET not in head
    assert head == sparse.expected("etc/public")[: 64 << 10]


def test_a_format_3_index_of_a_sparse_layer_is_built_again(built: Built, tmp_path: Path) -> None:
    """Format 3 had no extents and served sparse files' raw bytes: such an index is not used."""
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    layer = blob(tmp_path, built.tars["0.1"], "none")
    current = ensure_index(layers, tmp, layer.digest, layer.path)
    stored = index_path(layers, layer.digest)
    header, rows, _ = stored.read_text().split("\n")
    old_rows = [row[:11] for row in json.loads(rows)]  # format 3's columns
    old_header = {**json.loads(header), "version": 3}
    stored.write_text(f"{json.dumps(old_header)}\n{json.dumps(old_rows)}\n")
    assert load_index(layers, layer.digest) is None
    assert ensure_index(layers, tmp, layer.digest, layer.path) == current
    public = next(e for e in current.entries if e.path == ("etc", "public"))
    assert public.extents == ((0, 8192, 0), (sparse.MiB, 4096, 8192))


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("form", sparse.FORMS)
async def test_the_index_serves_gnu_tars_bytes(
    built: Built, tmp_path: Path, form: str, compression: str
) -> None:
    layers, tmp = tmp_path / "layers", tmp_path / "tmp"
    layers.mkdir()
    tmp.mkdir()
    layer = blob(tmp_path, built.tars[form], compression)
    index = ensure_index(layers, tmp, layer.digest, layer.path)
    data = check_data_present(layers, layer.path, index)
    ops = ReadOnlyOperations(merge([index]), ChunkCache(open_layers({layer.digest: data})))
    for path, want in built.reference[form].items():
        attrs, got = await read_all(ops, path)
        assert stat.S_ISREG(attrs.st_mode) and attrs.st_size == len(want), path
        assert got == want, path
