"""What image GC must keep: the images of containers, their volumes and `lazyfs mount`s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.fs.mount import is_mounted
from lazyfs.provision.usage import used_images
from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration


def test_containers_volumes_and_mounts_are_in_use_until_they_go(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    layout = images.build_oci_image(tmp_path / "img", [[images.Entry("f", data=b"v\n")]], "v1")
    volume_image = f"oci:{layout}:v1"
    info = json.loads(
        lazyfs("provision", "c", "one", "--backend", "copy", "-v", f"/v:{volume_image}").stdout
    )
    point = tmp_path / "mnt"
    point.mkdir()
    mounted = json.loads(lazyfs("mount", "busybox", str(point)).stdout)
    try:
        usage = used_images(lazyfs.work_dir)
        wanted = {*info["image"]["layers"], *info["volumes"][0]["image"]["layers"]}
        wanted |= set(mounted["image"]["layers"])
        assert usage.layers == wanted
        assert [(u.container_id, u.container_path) for u in usage.images] == [
            ("c", None),
            ("c", "/v"),
        ]
        assert {ref for ref, _ in usage.references} == {
            info["image"]["reference"],
            volume_image,
            mounted["image"]["reference"],
        }
        assert usage.unknown == ()
    finally:
        if is_mounted(point):
            lazyfs("umount", str(point))
    lazyfs("destroy", "c")
    usage = used_images(lazyfs.work_dir)
    assert usage.layers == frozenset() and usage.unknown == ()
