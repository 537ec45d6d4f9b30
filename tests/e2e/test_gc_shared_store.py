"""Image GC from one work dir keeps what another work dir sharing the store uses.

What a container uses is read from the records under its work dir. A GC
pass run with another work dir on the same store (``--docker_store_dir``)
saw none of them, and removed the layers under their overlay rootfses:
the running container's files went from under it. Each work dir now names
itself in the store as its provisioner starts (``lazyfs.store.users``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

BUSYBOX = "docker.io/library/busybox:latest"
NOBODY = 65534


def test_gc_from_another_work_dir_keeps_a_live_overlay_rootfs(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    store = tmp_path / "shared-store"
    flags = ("--docker_store_dir", str(store))
    info = json.loads(lazyfs("provision", "c1", "busybox", "--backend", "overlay", *flags).stdout)
    rootfs = Path(info["rootfs"])
    other = Lazyfs(tmp_path / "other-work", lazyfs.image_dir)
    try:
        assert f"removed image {BUSYBOX}" not in other("images", "prune", *flags).stdout
        refused = one_line_error(other("images", "rm", "busybox", *flags, check=False))
        assert f"container c1 (work dir {lazyfs.work_dir})" in refused
        assert (rootfs / "etc" / "motd").read_text() == "hello from a lazyfs rootfs\n"
        assert (rootfs / "bin" / "busybox").is_file()
    finally:
        lazyfs("destroy", "c1", *flags)
    # Once nothing uses it, GC from either work dir removes it.
    assert f"removed image {BUSYBOX}" in other("images", "prune", *flags).stdout


def test_a_work_dir_another_user_made_again_is_not_read_and_one_gone_is_forgotten(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    store = tmp_path / "shared-store"
    flags = ("--docker_store_dir", str(store))
    lazyfs("provision", "c1", "busybox", "--backend", "copy", *flags)
    records = tmp_path / "records"
    shutil.copytree(lazyfs.work_dir / "provisioner", records, symlinks=True)
    lazyfs("destroy", "c1", *flags)
    # As a user would after a reboot emptied /tmp: the work dir again, theirs, with a
    # record that names the image.
    shutil.rmtree(lazyfs.work_dir / "provisioner")
    shutil.copytree(records, lazyfs.work_dir / "provisioner", symlinks=True)
    for path in [lazyfs.work_dir, *lazyfs.work_dir.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)
    other = Lazyfs(tmp_path / "other-work", lazyfs.image_dir)
    assert f"removed image {BUSYBOX}" in other("images", "prune", *flags).stdout
    (entry,) = (store / "users").iterdir()  # still named: it is there, but not read
    assert entry.read_text() == f"{lazyfs.work_dir}\n"
    shutil.rmtree(lazyfs.work_dir)
    other("images", "prune", *flags)
    assert list((store / "users").iterdir()) == []  # gone, and forgotten
