"""GNU sparse entries, made by GNU tar in its four forms: applied as GNU tar reads them.

Applying (what copy, bind and overlay do) must give GNU tar's bytes and keep
the holes as holes on disk.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from backends.apply import apply_layers
from backends.base import LayerFile
from providers.digest import digest_bytes
from tests import sparse


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
    return LayerFile(digest_bytes(data), path, "application/octet-stream")


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
