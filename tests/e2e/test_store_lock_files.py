"""The store's lock files of images and adoptions do not pile up: one per reference ever
pulled (a new tag per build, an archive's path) stayed for good.

An image's lock file goes as its pull lets go of it; the ones no process holds (an
adoption's, a killed pull's) go with ``images prune``, ``images rm`` and a GC pass.
"""

from __future__ import annotations

import pytest

from lazyfs.provision.adopt_spawn import adopt_lock
from providers.fslock import exclusive_lock
from tests.support import hand_images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


def test_pulled_provisioned_destroyed_and_pruned_images_leave_no_lock_files(
    lazyfs: Lazyfs,
) -> None:
    archives = [
        hand_images.docker_archive(
            lazyfs.work_dir.parent / f"build-{n}.tar",
            [hand_images.layer(f"file-{n}", f"build {n}\n".encode())],
            None,
            f"app:build-{n}",
        )
        for n in (1, 2)
    ]
    for n, archive in enumerate(archives):
        lazyfs("provision", f"c{n}", f"docker-archive:{archive}", "--backend", "copy")
    locks = lazyfs.work_dir / "store" / "docker" / "locks"
    assert sorted(locks.glob("image-*.lock")) == []  # gone as each pull let go
    for n in range(len(archives)):
        lazyfs("destroy", f"c{n}")
    # An adoption's lock, which its process leaves, and one still held: only that stays.
    store = lazyfs.work_dir / "store" / "docker"
    left = adopt_lock(store, "docker.io/library/app:gone", "linux/amd64")
    left.touch()
    held = adopt_lock(store, "docker.io/library/app:adopting", "linux/amd64")
    with exclusive_lock(held):
        lazyfs("images", "prune")
        assert lazyfs.stored() == []
        assert sorted(locks.glob("image-*.lock")) == []
        assert sorted(locks.glob("adopt-*.lock")) == [held]
