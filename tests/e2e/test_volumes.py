"""Image volumes, as Mesos has them: `provision` and `run` with --volume or a ContainerInfo.

A volume is a further image provisioned by the container's backend and
recorded with it; `run` mounts it in the container with runc, read-only
unless ``rw``; `recover --keep` keeps and mounts it again; `destroy` and
`recover` remove it with the container.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backends.base import scratch_dir
from backends.mounts import is_mounted, mounts_under
from providers.fstree import remove_tree
from tests.support import images
from tests.support.fuse_mounts import kill_mount_process
from tests.support.lazyfs_cli import Lazyfs, one_line_error

pytestmark = pytest.mark.integration

BUSYBOX = {"type": "DOCKER", "docker": {"name": "busybox"}}


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An OCI layout image with /hello and an empty /sub, as the ``oci:`` transport names it."""
    work = tmp_path_factory.mktemp("volume-image")
    layer = [
        images.Entry("hello", data=b"hello from a volume\n"),
        images.Entry("sub", "dir", mode=0o755),
    ]
    layout = images.build_oci_image(work, [layer], "v1")
    return f"oci:{layout}:v1"


def containers(work: Path) -> list[str]:
    root = work / "provisioner" / "containers"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def provision(lazyfs: Lazyfs, cid: str, *args: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(lazyfs("provision", cid, *args).stdout)
    return info


def test_a_provisioned_volume_is_recorded_and_destroyed_with_its_container(
    lazyfs: Lazyfs, data_image: str
) -> None:
    info = provision(
        lazyfs, "c1", "busybox", "--backend", "overlay", "--volume", f"/data:{data_image}"
    )
    (volume,) = info["volumes"]
    assert volume["container_path"] == "/data" and volume["mode"] == "ro"
    assert volume["image"]["reference"] == data_image
    rootfs = Path(volume["rootfs"])
    # Under the container, beside its rootfs, as Mesos' volume/image isolator has it.
    assert rootfs.parent == Path(info["rootfs"]).parent
    assert (rootfs / "hello").read_text() == "hello from a volume\n"
    assert is_mounted(rootfs)
    lazyfs("destroy", "c1")
    assert not rootfs.exists()
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


@pytest.mark.parametrize("backend", ["copy", "overlay", "fuse"])
def test_run_mounts_a_volume_read_only_by_default(
    lazyfs: Lazyfs, data_image: str, backend: str
) -> None:
    script = "cat /data/hello; touch /data/new && echo wrote || echo refused"
    args = ("--backend", backend, "--volume", f"/data:{data_image}", "--", "sh", "-c", script)
    result = lazyfs("run", "busybox", *args)
    assert result.stdout == "hello from a volume\nrefused\n"
    assert "Read-only file system" in result.stderr
    # rw: writes reach the volume (its own copy, gone with the container).
    args = ("--backend", backend, "-v", f"/data:{data_image}:rw", "--", "sh", "-c", script)
    assert lazyfs("run", "busybox", *args).stdout == "hello from a volume\nwrote\n"
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_run_mounts_volumes_outer_first_and_from_a_container_info(
    lazyfs: Lazyfs, data_image: str, tmp_path: Path
) -> None:
    oci = data_image.removeprefix("oci:")
    spec = {
        "type": "MESOS",
        "mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}},
        "volumes": [
            # Inner first on purpose: the outer must be mounted before it.
            {"container_path": "/data/sub", "mode": "RO",
             "image": {"type": "DOCKER", "docker": {"name": f"oci:{oci}"}}},
            {"containerPath": "/data", "mode": "RW",
             "image": {"type": "DOCKER", "docker": {"name": f"oci:{oci}"}}},
        ],
    }  # fmt: skip
    path = tmp_path / "container.json"
    path.write_text(json.dumps(spec))
    script = (
        "cat /data/sub/hello; touch /data/w && echo outer-rw; touch /data/sub/w || echo inner-ro"
    )
    result = lazyfs("run", "--container-info", str(path), "--", "sh", "-c", script)
    assert result.stdout == "hello from a volume\nouter-rw\ninner-ro\n"


def test_a_read_only_rootfs_without_the_mount_point_is_one_line(
    lazyfs: Lazyfs, data_image: str
) -> None:
    args = ("--backend", "overlay", "--read-only", "-v", f"/nowhere:{data_image}", "--", "true")
    result = lazyfs("run", "busybox", *args, check=False)
    assert one_line_error(result) == (
        "lazyfs: volume /nowhere: the read-only rootfs has no /nowhere to mount it on "
        "(run it without --read-only)"
    )
    assert containers(lazyfs.work_dir) == []
    # Where the image has the directory, a read-only rootfs takes the volume.
    args = ("--backend", "overlay", "--read-only", "-v", f"/tmp:{data_image}", "--", "cat")
    assert lazyfs("run", "busybox", *args, "/tmp/hello").stdout == "hello from a volume\n"


def test_recover_keeps_volumes_mounts_them_again_and_destroys_them(
    lazyfs: Lazyfs, data_image: str
) -> None:
    volume = f"/data:{data_image}"
    kept = provision(lazyfs, "kept", "busybox", "--backend", "fuse", "-v", volume)
    gone = provision(lazyfs, "gone", "one", "--backend", "bind", "-v", volume)
    kept_volume = Path(kept["volumes"][0]["rootfs"])
    gone_volume = Path(gone["volumes"][0]["rootfs"])
    kill_mount_process(kept_volume)
    listed = {c["container_id"]: c for c in json.loads(lazyfs("ps", "--json").stdout)}
    assert listed["kept"]["mount"] == "dead" and listed["kept"]["rootfs_mount"] == "alive"
    assert listed["kept"]["volumes"][0]["mount"] == "dead"

    report = json.loads(lazyfs("recover", "--keep", "kept").stdout)
    assert report["kept"] == ["kept"] and report["remounted"] == ["kept"]
    assert report["destroyed"] == ["gone"]
    assert (kept_volume / "hello").read_text() == "hello from a volume\n"
    assert not gone_volume.exists()
    assert json.loads(lazyfs("ps", "--json").stdout)[0]["mount"] == "alive"
    lazyfs("destroy", "kept")
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_a_volume_that_cannot_be_mounted_again_makes_its_container_broken(
    lazyfs: Lazyfs, data_image: str
) -> None:
    info = provision(lazyfs, "c", "busybox", "--backend", "overlay", "-v", f"/data:{data_image}")
    volume = Path(info["volumes"][0]["rootfs"])
    subprocess.run(["umount", volume], check=True)  # gone, as after a reboot
    # ... and so is the extracted layer it mounted (a person, or GC, removed it).
    (layer,) = info["volumes"][0]["image"]["layers"]
    tree = Path(os.readlink(scratch_dir(volume) / "l" / "0"))
    remove_tree(tree)
    result = lazyfs("recover", "--keep", "c", check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout)["broken"] == {
        "c": f"its volume /data at {volume} is not mounted: layer {layer} is no longer"
        f" extracted in the store ({tree} is gone)"
    }
    lazyfs("destroy", "c")
    assert mounts_under(lazyfs.work_dir) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-v", "data:IMG"], "lazyfs: --volume 'data:IMG': container path 'data' is not absolute"),
        (["-v", "/a/../etc:IMG"], "container path '/a/../etc' has a '..' component"),
        (["-v", "/data:IMG:rx,z"], "lazyfs: --volume '/data:IMG:rx,z': unknown mode 'rx,z'"),
        (["-v", "/data:IMG:readonly"], "unknown mode 'readonly': use ro or rw"),
        (["-v", "/data"], "lazyfs: --volume '/data': no image"),
        (["-v", "/data::ro"], "lazyfs: --volume '/data::ro': no image"),
        (["-v", "/:IMG"], "container path '/' is the root"),
        (["-v", "/d:IMG", "-v", "/d/:IMG"], "lazyfs: two volumes at /d"),
        (["-v", "/d:oci:/nonexistent/layout"], "lazyfs: volume /d: "),
        (["-v", "/d:IMG:ro", "-v", "/e:docker:missing:1"], "lazyfs: volume /e: "),
    ],
)
def test_a_bad_volume_is_one_line_and_provisions_nothing(
    lazyfs: Lazyfs, data_image: str, args: list[str], expected: str
) -> None:
    argv = [a.replace("IMG", data_image) for a in args]
    for command in (["provision", "c", "busybox", *argv], ["run", "busybox", *argv, "--", "true"]):
        result = lazyfs(*command, check=False)
        assert expected.replace("IMG", data_image) in one_line_error(result)
        assert containers(lazyfs.work_dir) == []
        assert mounts_under(lazyfs.work_dir) == []


def test_a_volume_the_backend_refuses_is_named(lazyfs: Lazyfs, data_image: str) -> None:
    for volume, expected in [
        (f"/rw:{data_image}:rw", "read-only"),
        ("/two:busybox", "exactly one layer"),
    ]:
        result = lazyfs("provision", "c", "one", "--backend", "bind", "-v", volume, check=False)
        error = one_line_error(result)
        assert error.startswith(f"lazyfs: volume {volume.split(':')[0]}: "), error
        assert expected in error
        assert containers(lazyfs.work_dir) == []
        assert mounts_under(lazyfs.work_dir) == []


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ([], "not a JSON object"),
        ({"mesos": {"image": {"type": "DOCKER", "docker": {"name": "busybox"}}}, "hostname": "h"},
         "lazyfs does not take field(s) hostname"),
        ({"type": "DOCKER", "mesos": {}}, "type 'DOCKER': lazyfs provisions MESOS containers"),
        ({"type": "MESOS"}, "want 'mesos': {'image': IMAGE}"),
        ({"volumes": [{"container_path": "/d", "mode": "RX", "image": BUSYBOX}]},
         "volumes[0]: Failed to parse mode field"),
        ({"volumes": [{"container_path": "/d", "mode": "RO"}]}, "volumes[0]: missing image"),
        ({"volumes": [{"container_path": "d", "mode": "RO", "image": BUSYBOX}]},
         "'d' is not absolute"),
        ({"volumes": [{"container_path": "/d/..", "mode": "RO", "image": BUSYBOX}]},
         "has a '..' component"),
        ({"volumes": [{"container_path": "/d", "image": BUSYBOX}]},
         "missing required field(s): mode"),
        ({"volumes": [{"container_path": "/d", "mode": "RO", "image": {"type": "DOCKER"}}]},
         "volumes[0]: type DOCKER needs a 'docker' message"),
        ({"volumes": [{"container_path": "/d", "mode": "RW", "host_path": "/etc"}]},
         "host_path volumes are not provisioned by lazyfs"),
        # Mesos' Volume.Source (a Docker volume here): said as such, not in protobuf's words.
        ({"volumes": [{"container_path": "/d", "mode": "RW", "source": {
            "type": "DOCKER_VOLUME", "docker_volume": {"name": "data"}}}]},
         "volumes[0]: source volumes (Docker volumes, host and sandbox paths, secrets, CSI) are"
         " not provisioned by lazyfs; give an image"),
    ],
)  # fmt: skip
def test_a_bad_container_info_is_one_line_and_provisions_nothing(
    lazyfs: Lazyfs, tmp_path: Path, spec: Any, expected: str
) -> None:
    if isinstance(spec, dict) and "volumes" in spec:
        spec.setdefault("mesos", {"image": BUSYBOX})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    result = lazyfs("provision", "c", "--container-info", str(path), check=False)
    assert expected in one_line_error(result)
    assert containers(lazyfs.work_dir) == []
    both = lazyfs("provision", "c", "busybox", "--container-info", str(path), check=False)
    assert one_line_error(both) == "lazyfs: give IMAGE, --image-file or --container-info, only one"


def test_a_record_from_before_volumes_still_works(lazyfs: Lazyfs) -> None:
    info = provision(lazyfs, "old", "one", "--backend", "bind")
    record = lazyfs.work_dir / "provisioner" / "containers" / "old" / "info.json"
    # info.json as lazyfs wrote it before volumes (and before lazy layers).
    old = json.loads(record.read_text())
    del old["volumes"], old["remote_layers"]
    record.write_text(json.dumps(old))
    subprocess.run(["umount", info["rootfs"]], check=True)
    (listed,) = json.loads(lazyfs("ps", "--json").stdout)
    assert (listed["volumes"], listed["mount"]) == ([], "not mounted")
    report = json.loads(lazyfs("recover", "--keep", "old").stdout)
    assert report["kept"] == ["old"] and report["remounted"] == ["old"]
    assert (Path(info["rootfs"]) / "etc/motd").read_text() == "one layer\n"
    lazyfs("destroy", "old")
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []
