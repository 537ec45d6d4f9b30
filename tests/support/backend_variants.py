"""The backend variants the conformance suites run, and how they provision and compare.

A variant is a backend name and whether the rootfs is asked writable (and
for fuse, which path its mount takes: ``tests.support.fuse_paths``); adding
a backend to the suites is adding one line to ``VARIANTS``.  ``provisioned``
provisions through the real provisioner and always destroys, also when the
test fails, then checks nothing stayed mounted.  Trees are compared as
``tests.support.tree`` digests them, ignoring the labels a host may add.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from lazyfs.images.docker import DockerProvider
from lazyfs.provision.provisioner import Provisioner, ProvisionInfo
from lazyfs.store.disk import Store
from providers.image_pb2 import Image
from tests.support import fuse_paths, images
from tests.support.tree import Node, diff_trees, tree_digest

# The host may label files.  (overlayfs' own xattrs never show in a rootfs:
# the kernel hides them in an overlay mount, and no layer brings them.)
IGNORED_XATTRS = ("security.selinux",)


@dataclass(frozen=True)
class Variant:
    id: str
    backend: str
    writable: bool
    one_layer_only: bool = False
    needs_overlay: bool = False
    needs_fuse: bool = False
    # Whether the rootfs is made by backends.apply in the test's own process,
    # where a test can break it (the fuse backend merges in its mount process).
    applies_in_process: bool = True
    fuse_path: str | None = None


VARIANTS = (
    Variant("copy", "copy", writable=True),
    Variant("bind", "bind", writable=False, one_layer_only=True),
    Variant("overlay-ro", "overlay", writable=False, needs_overlay=True),
    Variant("overlay-rw", "overlay", writable=True, needs_overlay=True),
    *(
        Variant(
            f"fuse-{mode}{'' if path == fuse_paths.NO_OPEN else '-open'}",
            "fuse",
            writable=mode == "rw",
            needs_fuse=True,
            applies_in_process=False,
            fuse_path=path,
        )
        for path in fuse_paths.PATHS
        for mode in ("ro", "rw")
    ),
)


def variants(
    *, multi_layer: bool = False, writable: bool | None = None, in_process: bool = False
) -> list[Variant]:
    """``VARIANTS``: those that take images of many layers, the writable ones, or
    those whose layers are applied in the test's process."""
    return [
        v
        for v in VARIANTS
        if not (multi_layer and v.one_layer_only)
        and (writable is None or v.writable == writable)
        and (v.applies_in_process or not in_process)
    ]


def params(
    *, multi_layer: bool = False, writable: bool | None = None, in_process: bool = False
) -> list[object]:
    """``variants`` as pytest params, for ``indirect`` parametrizing of ``variant``."""
    chosen = variants(multi_layer=multi_layer, writable=writable, in_process=in_process)
    return [pytest.param(v, id=v.id) for v in chosen]


def fuse_usable() -> bool:
    return os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None


@dataclass(frozen=True)
class CaseImages:
    directory: Path  # a --docker_registry directory: NAME:latest.tar per case
    references: dict[str, Path]  # case name -> umoci's rootfs
    layouts: dict[str, Path]


def docker(name: str) -> Image:
    image = Image(type=Image.DOCKER)
    image.docker.name = name
    return image


def one_image_registry(tmp_path: Path) -> Path:
    """A ``--docker_registry`` directory under ``tmp_path`` holding ``one:latest``, whose
    one layer has ``/etc/motd`` (``hi``)."""
    directory = tmp_path / "images"
    directory.mkdir()
    layers = [[images.Entry("etc", "dir", mode=0o755), images.Entry("etc/motd", data=b"hi\n")]]
    layout = images.build_oci_image(tmp_path / "build", layers, "latest")
    images.to_docker_archive(layout, "latest", directory / "one:latest.tar", "one")
    return directory


def make_provisioner(work: Path, registry: Path) -> Provisioner:
    store = Store(work / "store")
    return Provisioner(work, store, {"docker": DockerProvider(store, str(registry))}, "copy")


@contextlib.asynccontextmanager
async def provisioned(
    prov: Provisioner, variant: Variant, image: str, container_id: str = "c1"
) -> AsyncIterator[ProvisionInfo]:
    """A rootfs of ``image`` made by ``variant``; destroyed on the way out, whatever happens."""
    home = prov.containers / container_id
    info = await prov.provision(
        container_id, docker(image), variant.backend, writable=variant.writable
    )
    try:
        yield info
    finally:
        destroyed = await prov.destroy(container_id)
        left = mounts_under(home)
        if left:
            unmount_all_under(home)
        assert destroyed and not left, f"destroy left mounts: {left}"
    assert not home.exists()


def digest(root: Path) -> dict[str, Node]:
    return tree_digest(root, ignore_xattrs=IGNORED_XATTRS)


def assert_same_tree(reference: Path, rootfs: Path) -> None:
    differences = diff_trees(digest(reference), digest(rootfs))
    assert differences == [], "\n".join(differences)


def store_state(store_root: Path) -> tuple[dict[str, Node], dict[str, str]]:
    """Everything shared in a store: the extracted layers, exactly, and each blob's hash."""
    layers = tree_digest(store_root / "layers")
    blobs = {
        str(path.relative_to(store_root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((store_root / "blobs").rglob("*"))
        if path.is_file()
    }
    return layers, blobs
