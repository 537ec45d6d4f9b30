"""recover --keep after a reboot: overlay rootfses and volumes are mounted again with
their containers' writes, or reported broken saying why (a layer the store lost)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backends.base import scratch_dir
from backends.mounts import mounts_under
from lazyfs.provision import runtime
from providers.fstree import remove_tree
from providers.manifest import RuntimeConfig
from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

MOTD = "hello from a lazyfs rootfs\n"


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = images.build_oci_image(
        tmp_path_factory.mktemp("data-image"),
        [[images.Entry("hello", data=b"hello from a volume\n")]],
        "v1",
    )
    return f"oci:{layout}:v1"


def provision(lazyfs: Lazyfs, cid: str, *args: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(lazyfs("provision", cid, *args).stdout)
    return info


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def reboot(*mounts: Path) -> None:
    """What a reboot does to these mounts: gone, and all that was under them."""
    for mount in mounts:
        subprocess.run(["umount", "-l", mount], check=True)


def states(lazyfs: Lazyfs) -> dict[str, str]:
    return {c["container_id"]: c["mount"] for c in json.loads(lazyfs("ps", "--json").stdout)}


def run_in(info: dict[str, Any], tmp_path: Path, script: str) -> int:
    """Run ``script`` with runc in the container's rootfs; its exit status."""
    config = runtime.bundle_config(
        Path(info["rootfs"]),
        RuntimeConfig.from_json(info["config"]),
        ["/bin/sh", "-c", script],
        readonly=False,
        # Relative: the container's cgroup goes under the test's own.
        cgroups_path=f"lazyfs-test/{info['container_id']}",
    )
    bundle = tmp_path / "bundle"
    runtime.write_bundle(bundle, config)
    return runtime.run_bundle(bundle, f"lazyfs-test-{os.getpid()}", tmp_path / "runc")


def test_overlay_rootfses_and_volumes_come_back_after_a_reboot_with_their_writes(
    lazyfs: Lazyfs, data_image: str, tmp_path: Path
) -> None:
    rw = provision(lazyfs, "rw", "busybox", "--backend", "overlay", "--writable",
                   "-v", f"/data:{data_image}:rw")  # fmt: skip
    ro = provision(lazyfs, "ro", "busybox", "--backend", "overlay", "-v", f"/data:{data_image}")
    rw_root, rw_volume = Path(rw["rootfs"]), Path(rw["volumes"][0]["rootfs"])
    ro_root, ro_volume = Path(ro["rootfs"]), Path(ro["volumes"][0]["rootfs"])
    try:
        (rw_root / "root" / "mine").write_text("written before the reboot\n")
        (rw_root / "etc" / "motd").unlink()  # a whiteout in its upper
        (rw_volume / "hello").write_text("changed in the volume\n")
        reboot(rw_root, rw_volume, ro_root, ro_volume)
        assert mounts_under(lazyfs.work_dir) == []
        # The old mount's work/work is left, here holding what a copy-up cut short by
        # the reboot would: the mount is made over it all the same.
        stale = scratch_dir(rw_root) / "work" / "work"
        assert stale.is_dir()
        (stale / "#1").write_text("half a copy-up\n")
        assert states(lazyfs) == {"ro": "not mounted", "rw": "not mounted"}

        report = json.loads(lazyfs("recover", "--keep", "rw", "ro").stdout)
        assert report == {
            "kept": ["ro", "rw"],
            "destroyed": [],
            "busy": [],
            "failed": {},
            "remounted": ["ro", "rw"],
            "broken": {},
        }
        assert (rw_root / "root" / "mine").read_text() == "written before the reboot\n"
        assert not (rw_root / "etc" / "motd").exists()
        assert (rw_volume / "hello").read_text() == "changed in the volume\n"
        assert (ro_root / "etc" / "motd").read_text() == MOTD
        assert (ro_volume / "hello").read_text() == "hello from a volume\n"
        for path in (ro_root / "new", ro_volume / "new"):  # read-only as provisioned
            with pytest.raises(OSError) as caught:
                path.write_text("x")
            assert caught.value.errno == errno.EROFS
        listed = json.loads(lazyfs("ps", "--json").stdout)
        assert [(c["mount"], c["volumes"][0]["mount"]) for c in listed] == [("alive", "alive")] * 2

        # Its container runs there, and what it writes lands in the upper kept before.
        assert run_in(rw, tmp_path, "cat /root/mine > /root/ran && exit 3") == 3
        assert (rw_root / "root" / "ran").read_text() == "written before the reboot\n"
        assert (scratch_dir(rw_root) / "upper" / "root" / "ran").is_file()
        # Healthy now: nothing to mount again.
        again = json.loads(lazyfs("recover", "--keep", "rw", "ro").stdout)
        assert again["kept"] == ["ro", "rw"] and again["remounted"] == []
        lazyfs("destroy", "rw")
        lazyfs("destroy", "ro")
        assert containers(lazyfs.work_dir) == []
        assert mounts_under(lazyfs.work_dir) == []
    finally:
        lazyfs("recover", check=False)
    assert mounts_under(lazyfs.work_dir) == []


def test_an_overlay_rootfs_whose_extracted_layer_was_removed_is_broken_saying_so(
    lazyfs: Lazyfs,
) -> None:
    info = provision(lazyfs, "rw", "busybox", "--backend", "overlay", "--writable")
    rootfs = Path(info["rootfs"])
    scratch = scratch_dir(rootfs)
    try:
        (rootfs / "root" / "mine").write_text("the container's own\n")
        reboot(rootfs)
        top = info["image"]["layers"][-1]
        tree = Path(os.readlink(scratch / "l" / "0"))  # l/0 is the top layer
        assert tree.parent.name == top.removeprefix("sha256:")
        remove_tree(tree)  # by a person, or a GC that took it for unused

        result = lazyfs("recover", "--keep", "rw", check=False)
        assert result.returncode == 1
        report = json.loads(result.stdout)
        why = (
            f"its rootfs {rootfs} is not mounted: layer {top} is no longer extracted"
            f" in the store ({tree} is gone)"
        )
        assert report["broken"] == {"rw": why}
        assert report["kept"] == [] and report["remounted"] == [] and report["destroyed"] == []
        assert result.stderr == f"lazyfs: container rw is broken: {why}\n"
        # Left as it was: nothing mounted over what is left, the writes still there.
        assert mounts_under(lazyfs.work_dir) == []
        assert (scratch / "upper" / "root" / "mine").read_text() == "the container's own\n"
        assert states(lazyfs) == {"rw": "not mounted"}
        lazyfs("destroy", "rw")
        assert containers(lazyfs.work_dir) == []
    finally:
        lazyfs("recover", check=False)
    assert mounts_under(lazyfs.work_dir) == []


def test_an_overlay_rootfs_is_mounted_again_only_over_the_layers_it_was_made_of(
    lazyfs: Lazyfs,
) -> None:
    info = provision(lazyfs, "mine", "busybox", "--backend", "overlay")
    mine = Path(info["rootfs"])
    other = Path(provision(lazyfs, "other", "one", "--backend", "overlay")["rootfs"])
    try:
        reboot(mine, other)
        link = scratch_dir(mine) / "l" / "0"
        # Its top layer's link leads to another image's layer now, one present in the store.
        elsewhere = Path(os.readlink(scratch_dir(other) / "l" / "0"))
        link.unlink()
        link.symlink_to(elsewhere)
        result = lazyfs("recover", "--keep", "mine", "other", check=False)
        report = json.loads(result.stdout)
        layers = lazyfs.work_dir / "store" / "docker" / "layers"
        top = info["image"]["layers"][-1]
        assert report["broken"] == {
            "mine": f"its rootfs {mine} is not mounted: {link} leads to {elsewhere},"
            f" not to layer {top} in {layers}"
        }
        assert report["remounted"] == ["other"]
        assert mounts_under(lazyfs.work_dir) == [other]
    finally:
        lazyfs("recover", check=False)
    assert mounts_under(lazyfs.work_dir) == []
