"""Every backend gives, for every image, the tree ``umoci unpack`` gives.

Parametrized over ``tests.support.backend_variants.VARIANTS`` (copy; bind
for one-layer images; overlay read-only and writable; fuse read-only and
writable, each on both FUSE paths: ``tests.support.fuse_paths``): names,
types, modes, owners, sizes, contents, link targets, device numbers, xattrs,
hardlinks and mtimes, of directories too; and, which the comparison leaves
out, the root's own attributes, from the topmost layer with a ``./`` entry.
Read-only rootfses refuse writes; writable ones take them without changing
anything shared in the store.  A last test shows the comparison catches a
broken layer applier (for the fuse backend's merged tree,
``tests/integration/test_lazy_tree.py`` shows it).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import backends.apply_tree
from backends.mounts import mounts_under
from providers.errors import BackendError
from tests.support import images
from tests.support.backend_cases import CASES, root_header
from tests.support.backend_variants import (
    IGNORED_XATTRS,
    CaseImages,
    Variant,
    assert_same_tree,
    digest,
    docker,
    make_provisioner,
    params,
    provisioned,
    store_state,
    variants,
)
from tests.support.rich_image import RICH_TAG
from tests.support.tree import diff_trees

pytestmark = pytest.mark.integration

# The local forms of the rich image (tests/conftest.py's image_dir).
FORMS = ["legacy", "archive", "ociarchive", "ocidir", "zstd", "docker25"]


def case_params() -> list[object]:
    """(variant, case) pairs, bind only with one-layer images."""
    return [
        pytest.param(v, case, id=f"{v.id}-{case}")
        for v in variants()
        for case, layers in CASES.items()
        if len(layers) == 1 or not v.one_layer_only
    ]


@pytest.mark.parametrize(("variant", "case"), case_params(), indirect=["variant"])
async def test_tree_equals_umoci_unpack(
    variant: Variant, case: str, case_images: CaseImages, tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    async with provisioned(prov, variant, case) as info:
        assert info.backend == variant.backend
        assert_same_tree(case_images.references[case], info.rootfs)


@pytest.mark.parametrize("variant", params(multi_layer=True), indirect=True)
@pytest.mark.parametrize("case", [case for case in CASES if root_header(case) is not None])
async def test_the_root_has_the_topmost_root_headers_attributes(
    variant: Variant, case: str, case_images: CaseImages, tmp_path: Path
) -> None:
    """What the tree comparison leaves out: the root's mode, owner, mtime and xattrs."""
    header = root_header(case)
    assert header is not None
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    async with provisioned(prov, variant, case) as info:
        found = os.stat(info.rootfs)
        names = [name for name in os.listxattr(info.rootfs) if not name.startswith(IGNORED_XATTRS)]
        xattrs = sorted((name, os.getxattr(info.rootfs, name)) for name in names)
    assert (found.st_mode, found.st_uid, found.st_gid, found.st_mtime_ns, xattrs) == (
        stat.S_IFDIR | header.mode,
        header.uid,
        header.gid,
        header.mtime_ns,
        sorted(header.xattrs.items()),
    )


@pytest.mark.parametrize("variant", params(multi_layer=True), indirect=True)
@pytest.mark.parametrize("form", FORMS)
async def test_every_local_form_gives_the_same_tree(
    variant: Variant, form: str, image_dir: Path, rich_layout: Path, tmp_path: Path
) -> None:
    reference = images.umoci_unpack(rich_layout, RICH_TAG, tmp_path / "umoci")
    prov = make_provisioner(tmp_path / "work", image_dir)
    async with provisioned(prov, variant, f"{form}:{RICH_TAG}") as info:
        assert_same_tree(reference, info.rootfs)


@pytest.mark.parametrize("variant", params(writable=False), indirect=True)
async def test_read_only_rootfs_refuses_writes(
    variant: Variant, case_images: CaseImages, tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    async with provisioned(prov, variant, "single") as info:
        assert not info.writable
        assert mounts_under(info.rootfs) == [info.rootfs]
        with pytest.raises(OSError) as caught:
            (info.rootfs / "etc" / "new").write_text("x")
        assert caught.value.errno == errno.EROFS


@pytest.mark.parametrize("variant", params(writable=True), indirect=True)
async def test_writes_leave_the_store_unchanged(
    variant: Variant, case_images: CaseImages, tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    store = tmp_path / "work" / "store"
    async with provisioned(prov, variant, "rich") as info:
        assert info.writable
        before = store_state(store)
        rootfs = info.rootfs
        (rootfs / "etc" / "new").write_text("new\n")
        with (rootfs / "etc" / "passwd").open("a") as passwd:
            passwd.write("extra:x:5:5::/:/bin/false\n")
        (rootfs / "etc" / "hostname").unlink()
        (rootfs / "usr" / "bin" / "prog").unlink()
        os.chmod(rootfs / "bin" / "tool", 0o755)
        (rootfs / "opaque" / "new").unlink()
        (rootfs / "opaque").rmdir()
        seen = digest(rootfs)
        assert "etc/hostname" not in seen and "opaque" not in seen
        assert seen["etc/new"].size == 4 and seen["bin/tool"].mode & 0o7777 == 0o755
        # The hardlinked names of the deleted file keep its contents.
        assert (rootfs / "usr" / "bin" / "prog-link").read_bytes() == b"prog\n" * 1000
        assert store_state(store) == before
    assert store_state(store) == before


async def test_bind_refuses_many_layers_before_mounting(
    case_images: CaseImages, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("backends need root")
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    with pytest.raises(BackendError, match="exactly one layer"):
        await prov.provision("c1", docker("rich"), "bind")
    assert prov.list() == []
    assert mounts_under(tmp_path) == []


@pytest.mark.parametrize("variant", params(multi_layer=True, in_process=True), indirect=True)
async def test_the_comparison_catches_a_broken_applier(
    variant: Variant, case_images: CaseImages, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def ignore_whiteouts(tree: object, path: object, entry: str) -> None:
        """A bug: whiteouts do nothing."""

    monkeypatch.setattr(backends.apply_tree.Tree, "whiteout", ignore_whiteouts)
    prov = make_provisioner(tmp_path / "work", case_images.directory)
    async with provisioned(prov, variant, "rich") as info:
        differences = diff_trees(digest(case_images.references["rich"]), digest(info.rootfs))
    assert "etc/remove-me: only in b (file 0o100644 0:0 size=18)" in differences
    assert any(line.startswith("srv/www: only in b") for line in differences)
