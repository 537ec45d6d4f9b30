"""Fixtures that drive the real ``lazyfs`` command against a sample image."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from providers.fstree import remove_tree
from tests.support import images
from tests.support.lazyfs_cli import DEEP, REPO, Lazyfs


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local image directory holding, as ``docker save`` tarballs:

    - busybox:latest, built from the host's busybox (two layers);
    - deep:latest, one layer of DEEP nested directories ``d/d/...`` with a file ``f``
      at the bottom;
    - empty:latest, an image of no layer at all;
    - one:latest, one layer with /etc/motd, for the bind backend.
    """
    directory = tmp_path_factory.mktemp("images")
    subprocess.run(
        [REPO / "scripts" / "sample-image", directory, "busybox:latest"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = tmp_path_factory.mktemp("odd-images")
    path = ""
    entries = []
    for _ in range(DEEP):
        path = f"{path}/d" if path else "d"
        entries.append(images.Entry(path, "dir", mode=0o755))
    entries.append(images.Entry(f"{path}/f", data=b"bottom\n"))
    config = images.ImageConfig(cmd=("/bin/sh",))
    one = [images.Entry("etc", "dir", mode=0o755), images.Entry("etc/motd", data=b"one layer\n")]
    for name, layers in (("deep", [entries]), ("empty", []), ("one", [one])):
        layout = images.build_oci_image(work / name, layers, "latest", config)
        images.to_docker_archive(layout, "latest", directory / f"{name}:latest.tar", name)
    return directory


@pytest.fixture
def lazyfs(tmp_path: Path, image_dir: Path) -> Iterator[Lazyfs]:
    work = tmp_path / "work"
    yield Lazyfs(work, image_dir)
    # Containers a failing test left to runc go first: they use what follows.
    delete_runc_containers(work / "runc")
    # Whatever a failing test left mounted goes, so the next test starts clean.
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)
    # And what it left on disk: pytest's own clean-up cannot remove a deep tree.
    remove_tree(work)


def delete_runc_containers(state_root: Path) -> None:
    """Kill and delete every container runc has under ``state_root``."""
    if not state_root.is_dir():
        return
    for cid in os.listdir(state_root):
        subprocess.run(
            ["runc", "--root", state_root, "delete", "--force", cid],
            capture_output=True,
            check=False,
        )


@pytest.fixture
def store(lazyfs: Lazyfs) -> Iterator[Path]:
    """The Docker store of ``lazyfs``'s work dir; its containers are recovered away after."""
    yield lazyfs.work_dir / "store" / "docker"
    lazyfs("recover", check=False)
