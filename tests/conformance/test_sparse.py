"""GNU sparse layers: every backend gives GNU tar's bytes, umoci's tree, and no other file's data.

One image per sparse form GNU tar writes (``tests.support.sparse.FORMS``), its one
layer made by ``tar --sparse`` and gzipped by umoci, served from an OCI
layout directory.  Each backend's rootfs must hold, byte for byte, what GNU
tar extracts from that layer (the sparse ``etc/public`` never shows the
private ``etc/shadow`` stored after it), equal ``umoci unpack``'s tree
(umoci 0.4.7 refuses old GNU ``S`` entries: PAX forms only), and,
where a backend writes the files itself (copy, bind, overlay), keep the
holes as holes.  A writable rootfs takes a write into a sparse file (the
fuse backend copies it up, holes and all).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import images, sparse
from tests.support.backend_variants import (
    Variant,
    assert_same_tree,
    make_provisioner,
    params,
    provisioned,
)

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class SparseImages:
    directory: Path  # a --docker_registry directory: sparse-FORM:latest/ per form
    gnu: dict[str, dict[str, bytes]]  # form -> GNU tar's files
    umoci: dict[str, Path]  # form -> umoci's rootfs, for the forms umoci reads


def _name(form: str) -> str:
    return "sparse-" + form.replace(".", "")


@pytest.fixture(scope="module")
def sparse_images(tmp_path_factory: pytest.TempPathFactory) -> SparseImages:
    work = tmp_path_factory.mktemp("sparse-images")
    tree = sparse.make_tree(work / "tree")
    directory = work / "images"
    gnu, umoci = {}, {}
    for form in sparse.FORMS:
        name = _name(form)
        tar = sparse.gnu_tar(tree, work / f"{name}.tar", form)
        gnu[form] = sparse.regular_files(sparse.gnu_extract(tar, work / f"{name}-gnu"))
        layout = work / name / "oci"
        images.run("umoci", "init", "--layout", layout)
        images.run("umoci", "new", "--image", f"{layout}:latest")
        images.run("umoci", "raw", "add-layer", "--image", f"{layout}:latest", tar)
        if form != "gnu":
            umoci[form] = images.umoci_unpack(layout, "latest", work / name / "bundle")
        images.to_oci_dir(layout, "latest", directory / f"{name}:latest")
    return SparseImages(directory, gnu, umoci)


@pytest.mark.parametrize("form", sparse.FORMS)
@pytest.mark.parametrize("variant", params(), indirect=True)
async def test_sparse_files_read_as_gnu_tar_extracts_them(
    variant: Variant, form: str, sparse_images: SparseImages, tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", sparse_images.directory)
    async with provisioned(prov, variant, _name(form)) as info:
        rootfs = info.rootfs
        assert sparse.regular_files(rootfs) == sparse_images.gnu[form]
        assert sparse.SECRET not in (rootfs / "etc/public").read_bytes()
        if form in sparse_images.umoci:
            assert_same_tree(sparse_images.umoci[form], rootfs)
        if variant.applies_in_process:
            # 16 MiB apparent, one block of data; the store's copy is shared, not counted.
            assert sparse.allocated(rootfs / "var/log/lastlog") <= 64 << 10
            assert sparse.allocated(rootfs / "var/lib/all-hole") == 0
        if variant.writable:
            with (rootfs / "etc/public").open("r+b") as public:
                public.seek(sparse.MiB + 4096)
                public.write(b"written")
            want = bytearray(sparse.expected("etc/public"))
            want[sparse.MiB + 4096 : sparse.MiB + 4096 + 7] = b"written"
            assert (rootfs / "etc/public").read_bytes() == want
            assert os.stat(rootfs / "etc/public").st_size == 3 * sparse.MiB
