"""The copy and bind backends give the tree `umoci unpack` gives, from every local form."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from backends.mounts import mounts_under
from lazyfs.docker import DockerProvider
from lazyfs.progress import Progress
from lazyfs.provisioner import Provisioner
from lazyfs.store import Store
from providers.errors import BackendError
from providers.image_pb2 import Image
from tests import images
from tests.integration.conftest import RICH_TAG
from tests.tree import diff_trees, tree_digest

pytestmark = pytest.mark.integration

FORMS = ["legacy", "archive", "ociarchive", "ocidir", "zstd", "docker25"]


@pytest.fixture(scope="module")
def reference_tree(rich_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return images.umoci_unpack(rich_layout, RICH_TAG, tmp_path_factory.mktemp("umoci") / "b")


def provisioner(work: Path, registry: Path, backend: str = "copy") -> Provisioner:
    store = Store(work / "store")
    return Provisioner(work, store, {"docker": DockerProvider(store, str(registry))}, backend)


def docker(name: str) -> Image:
    image = Image(type=Image.DOCKER)
    image.docker.name = name
    return image


@pytest.mark.parametrize("form", FORMS)
async def test_copy_backend_equals_umoci_unpack(
    form: str, image_dir: Path, reference_tree: Path, tmp_path: Path
) -> None:
    prov = provisioner(tmp_path / "work", image_dir)
    info = await prov.provision("c1", docker(f"{form}:{RICH_TAG}"), progress=Progress())
    differences = diff_trees(tree_digest(reference_tree), tree_digest(info.rootfs))
    assert differences == []
    assert await prov.destroy("c1")
    assert not (tmp_path / "work/provisioner/containers/c1").exists()


@pytest.fixture(scope="module")
def one_layer_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image directory holding single:latest.tar, and umoci's unpack of it."""
    work = tmp_path_factory.mktemp("single")
    layer = [
        images.Entry("bin", kind="dir"),
        images.Entry("bin/tool", data=b"#!/bin/sh\necho hi\n", mode=0o4755),
        images.Entry("etc", kind="dir"),
        images.Entry("etc/hosts", data=b"127.0.0.1 localhost\n", uid=1000, gid=1000),
        images.Entry("etc/link", kind="symlink", target="hosts"),
        images.Entry("etc/hard", kind="hardlink", target="etc/hosts"),
    ]
    layout = images.build_oci_image(work, [layer], tag="latest")
    directory = work / "images"
    images.to_docker_archive(layout, "latest", directory / "single:latest.tar", "single")
    unpacked = images.umoci_unpack(layout, "latest", work / "bundle")
    return directory, unpacked


async def test_bind_backend_is_read_only_and_equals_umoci(
    one_layer_dir: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, unpacked = one_layer_dir
    prov = provisioner(tmp_path / "work", directory, backend="bind")
    info = await prov.provision("c1", docker("single"))
    try:
        assert info.backend == "bind" and not info.writable
        assert mounts_under(info.rootfs) == [info.rootfs]
        assert diff_trees(tree_digest(unpacked), tree_digest(info.rootfs)) == []
        with pytest.raises(OSError) as caught:
            (info.rootfs / "etc" / "new").write_text("x")
        assert caught.value.errno == errno.EROFS
    finally:
        assert await prov.destroy("c1")
    assert mounts_under(tmp_path) == []
    assert not (tmp_path / "work/provisioner/containers/c1").exists()
    # The extracted layer stays in the store for the next container.
    assert list((tmp_path / "work/store/layers").iterdir())


async def test_bind_refuses_many_layers_before_mounting(image_dir: Path, tmp_path: Path) -> None:
    prov = provisioner(tmp_path / "work", image_dir, backend="bind")
    with pytest.raises(BackendError, match="exactly one layer"):
        await prov.provision("c1", docker(f"archive:{RICH_TAG}"))
    assert prov.list() == []
    assert mounts_under(tmp_path) == []
