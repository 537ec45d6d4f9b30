"""A compression bomb through the CLI: one line, no rootfs, nothing stored; the flags raise it.

The image's one gzip layer (made by umoci) is a tar of 100 MiB of zeros, about
1000 times its compressed size: past the default ``--max_layer_ratio``.
Every backend refuses it the same way and leaves no container, extracted
layer, index or scratch behind; with the ratio raised, it provisions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from backends.overlay import overlay_usable
from tests.support import images
from tests.support.backend_variants import fuse_usable
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

ZEROS = 100 << 20
BACKENDS = ["copy", "bind", "overlay", "fuse"]


@pytest.fixture(scope="module")
def bomb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --docker_registry directory with bomb:latest, an OCI layout of one gzip layer."""
    work = tmp_path_factory.mktemp("bomb")
    layout = images.build_oci_image(work, [[images.Entry("zeros", data=bytes(ZEROS))]])
    directory = work / "images"
    images.to_oci_dir(layout, "latest", directory / "bomb:latest")
    return directory


@pytest.fixture
def lazyfs(tmp_path: Path, bomb_dir: Path) -> Iterator[Lazyfs]:
    """``lazyfs`` on a fresh work dir and the bomb; whatever a failing test provisioned goes."""
    command = Lazyfs(tmp_path / "work", bomb_dir)
    command.work_dir.mkdir()
    yield command
    command("destroy", "c1", check=False)
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)


def need(backend: str, work: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root")
    if backend == "overlay" and not overlay_usable(work):
        pytest.fail("overlayfs is not usable here")
    if backend == "fuse" and not fuse_usable():
        pytest.fail("FUSE is not usable here")


def leftovers(work: Path) -> list[str]:
    """What a refused provision might have left: containers, layer data, scratch."""
    store = work / "store" / "docker"
    found = [str(p.relative_to(work)) for p in (work / "provisioner" / "containers").iterdir()]
    for layer in (store / "layers").glob("*"):
        found += [str(p.relative_to(work)) for p in layer.iterdir() if p.name != "lock"]
    found += [str(p.relative_to(work)) for p in (store / "tmp").glob("*")]
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bomb_is_refused_in_one_line_and_leaves_nothing(
    backend: str, lazyfs: Lazyfs, tmp_path: Path
) -> None:
    need(backend, lazyfs.work_dir)
    error = one_line_error(lazyfs("provision", "c1", "bomb", "--backend", backend, check=False))
    assert "unpacks to more than" in error and "--max_layer_ratio" in error
    assert leftovers(lazyfs.work_dir) == []
    assert mounts_under(tmp_path) == []


@pytest.mark.parametrize("spelling", ["--max_layer_ratio", "--max-layer-ratio"])
def test_the_ratio_flag_lets_it_through(spelling: str, lazyfs: Lazyfs) -> None:
    flags = [spelling, "100000"]
    out = json.loads(lazyfs(*flags, "provision", "c1", "bomb", "--backend", "copy").stdout)
    assert (Path(out["rootfs"]) / "zeros").stat().st_size == ZEROS
    lazyfs(*flags, "destroy", "c1")


@pytest.mark.parametrize("spelling", ["--max_layer_size", "--max-layer-size"])
def test_the_size_flag_bounds_any_layer(spelling: str, lazyfs: Lazyfs) -> None:
    flags = ["--max_layer_ratio", "100000", spelling, "50MB"]
    error = one_line_error(
        lazyfs(*flags, "provision", "c1", "bomb", "--backend", "copy", check=False)
    )
    assert f"unpacks to more than {50 << 20} bytes, the most any layer may have" in error
    assert error.endswith("see --max_layer_size")
    assert leftovers(lazyfs.work_dir) == []


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--max_layer_size", "lots"), ("--max_layer_size", "0KB"), ("--max_layer_ratio", "0")],
)
def test_bad_limit_values_are_usage_errors(flag: str, value: str, lazyfs: Lazyfs) -> None:
    error = one_line_error(lazyfs(flag, value, "images", check=False))
    assert flag in error and repr(value) in error


def test_lazyfs_mount_takes_the_flags_too(lazyfs: Lazyfs, tmp_path: Path) -> None:
    need("fuse", lazyfs.work_dir)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        error = one_line_error(lazyfs("mount", "bomb", str(mountpoint), check=False))
        assert "--max_layer_ratio" in error
        assert mounts_under(tmp_path) == [] and leftovers(lazyfs.work_dir) == []
        lazyfs("--max_layer_ratio", "100000", "mount", "bomb", str(mountpoint))
        assert (mountpoint / "zeros").stat().st_size == ZEROS
    finally:
        if mounts_under(tmp_path):
            lazyfs("umount", str(mountpoint), check=False)
    assert mounts_under(tmp_path) == []
