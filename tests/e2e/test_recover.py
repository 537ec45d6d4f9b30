"""recover: one failure does not stop it; a running container is busy; a kept one works."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from backends.base import scratch_dir
from backends.mounts import mounts_under
from lazyfs.fs.mount import recorded_pid
from tests.support import images
from tests.support.fuse_mounts import kill_mount_process
from tests.support.lazyfs_cli import Lazyfs
from tests.support.processes import zombie

pytestmark = pytest.mark.integration


def pid_alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists() and not zombie(pid)


def containers(work: Path) -> list[str]:
    return sorted(p.name for p in (work / "provisioner" / "containers").iterdir())


def test_a_container_that_cannot_go_is_reported_and_the_others_go(lazyfs: Lazyfs) -> None:
    rootfs = {}
    for cid in ("c1", "c2", "c3"):
        out = json.loads(lazyfs("provision", cid, "busybox", "--backend", "copy").stdout)
        rootfs[cid] = Path(out["rootfs"])
    stuck = rootfs["c2"] / "etc" / "motd"
    subprocess.run(["chattr", "+i", stuck], check=True)  # as a container might have
    try:
        result = lazyfs("recover", check=False)
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["destroyed"] == ["c1", "c3"]
    assert report["failed"] == {"c2": f"Operation not permitted: {stuck}"}
    assert result.stderr == (
        f"lazyfs: container c2 could not be destroyed: Operation not permitted: {stuck}\n"
    )
    assert containers(lazyfs.work_dir) == ["c2"]
    # Once it can go, the next recover takes it.
    assert json.loads(lazyfs("recover").stdout)["destroyed"] == ["c2"]
    assert containers(lazyfs.work_dir) == []


def test_a_running_container_is_busy_and_kept(lazyfs: Lazyfs) -> None:
    script = "echo up; read line; cat /etc/motd"
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", "copy", "busybox", "--", "sh", "-c", script),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and run.stdin is not None
        assert run.stdout.readline() == "up\n", run.stderr and run.stderr.read()
        (running,) = containers(lazyfs.work_dir)
        report = json.loads(lazyfs("recover").stdout)
        assert report["busy"] == [running] and report["destroyed"] == []
        run.stdin.write("go on\n")
        run.stdin.close()
        # The container reads its rootfs after recover: it is still there.
        assert run.stdout.read() == "hello from a lazyfs rootfs\n"
        assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            # EOF lets the container end by itself; runc would outlive a killed run.
            if run.stdin is not None and not run.stdin.closed:
                run.stdin.close()
            try:
                run.wait(timeout=60)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
    assert containers(lazyfs.work_dir) == []


def test_kept_containers_with_dead_mounts_are_mounted_again(lazyfs: Lazyfs) -> None:
    wanted = {
        "bind": ("one", "--backend", "bind"),
        "copy": ("busybox", "--backend", "copy"),
        "fuse-ro": ("busybox", "--backend", "fuse"),
        "fuse-rw": ("busybox", "--backend", "fuse", "--writable"),
        "overlay": ("busybox", "--backend", "overlay"),
    }
    rootfs = {}
    for cid, args in wanted.items():
        rootfs[cid] = Path(json.loads(lazyfs("provision", cid, *args).stdout)["rootfs"])
    kill_mount_process(rootfs["fuse-ro"])
    kill_mount_process(rootfs["fuse-rw"])
    with pytest.raises(OSError) as caught:
        (rootfs["fuse-ro"] / "etc").stat()
    assert caught.value.errno == errno.ENOTCONN
    # Gone as after a reboot.
    subprocess.run(["umount", rootfs["bind"]], check=True)
    subprocess.run(["umount", rootfs["overlay"]], check=True)

    result = lazyfs("recover", "--keep", *wanted)
    assert result.stderr == ""
    report = json.loads(result.stdout)
    assert report["kept"] == ["bind", "copy", "fuse-ro", "fuse-rw", "overlay"]
    assert report["remounted"] == ["bind", "fuse-ro", "fuse-rw", "overlay"]
    assert report["destroyed"] == [] and report["failed"] == {} and report["broken"] == {}
    assert (rootfs["bind"] / "etc/motd").read_text() == "one layer\n"
    for cid in ("fuse-ro", "fuse-rw", "overlay"):
        assert (rootfs[cid] / "etc/motd").read_text() == "hello from a lazyfs rootfs\n"
    # Kept and healthy now: a second recover has nothing to mount. --keep repeated adds up:
    # an agent naming each container with its own flag must not lose all but the last.
    again = lazyfs("recover", "--keep", "bind", "copy", "--keep", "fuse-ro", "--keep", "fuse-rw")
    again = json.loads(again.stdout)
    assert again["kept"] == ["bind", "copy", "fuse-ro", "fuse-rw"] and again["remounted"] == []
    assert again["destroyed"] == ["overlay"]
    lazyfs("recover")
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == []


def test_live_mounts_under_a_work_dir_reached_through_a_symlink_are_kept_as_they_are(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    # /proc/self/mountinfo names mount points by their real paths; a work dir given
    # through a symlink (/var/run is one to /run on Debian) named them otherwise, and
    # recover --keep took live mounts for gone: it killed a serving mount process.
    lazyfs.work_dir.mkdir()
    linked = Lazyfs(tmp_path / "linked-work", lazyfs.image_dir)
    linked.work_dir.symlink_to(lazyfs.work_dir)
    wanted = {
        "bind": ("one", "--backend", "bind"),
        "fuse": ("busybox", "--backend", "fuse"),
        "overlay": ("busybox", "--backend", "overlay"),
    }
    rootfs = {}
    for cid, args in wanted.items():
        rootfs[cid] = Path(json.loads(linked("provision", cid, *args).stdout)["rootfs"])
    pid = recorded_pid(scratch_dir(rootfs["fuse"]))
    report = json.loads(linked("recover", "--keep", *wanted).stdout)
    assert report["kept"] == sorted(wanted) and report["remounted"] == []
    assert report["broken"] == {} and report["destroyed"] == []
    assert recorded_pid(scratch_dir(rootfs["fuse"])) == pid and pid_alive(pid)
    listed = json.loads(linked("ps", "--json").stdout)
    assert {row["container_id"]: row["mount"] for row in listed} == dict.fromkeys(wanted, "alive")
    linked("recover")
    assert containers(lazyfs.work_dir) == []
    assert mounts_under(lazyfs.work_dir) == [] and not pid_alive(pid)


def test_a_kept_container_is_mounted_again_from_its_own_image_after_its_tag_moved(
    lazyfs: Lazyfs, tmp_path: Path
) -> None:
    def build(version: str) -> Path:
        layer = [images.Entry("version", data=f"version {version}\n".encode())]
        return images.build_oci_image(tmp_path / f"v{version}", [layer], "v1")

    place = tmp_path / "app"
    shutil.move(build("1"), place)
    image = f"oci:{place}:v1"
    info = json.loads(
        lazyfs("provision", "t1", image, "--backend", "fuse", "--writable", "-v", f"/m:{image}:rw")
        .stdout
    )  # fmt: skip
    rootfs, volume = Path(info["rootfs"]), Path(info["volumes"][0]["rootfs"])
    (rootfs / "mine").write_text("the container's own\n")
    # Records of an earlier lazyfs hold no manifest: to mount one again, the store's has to
    # be the same image; one that needs no mounting needs no image.
    for cid in ("t2", "t3"):
        lazyfs("provision", cid, image, "--backend", "fuse")
        record = lazyfs.work_dir / f"provisioner/containers/{cid}/info.json"
        written = json.loads(record.read_text())
        if cid == "t2":  # a damaged one counts as none
            written["image"]["manifest"]["config"] = []
        else:
            del written["image"]["manifest"]
        record.write_text(json.dumps(written))
    t2 = lazyfs.work_dir / "provisioner/containers/t2/info.json"
    old = Path(json.loads(t2.read_text())["rootfs"])
    # Only its volume is mounted again: its rootfs' image is not looked up.
    t4 = json.loads(
        lazyfs("provision", "t4", image, "--backend", "fuse", "-v", "/v:busybox").stdout
    )
    t4_record = lazyfs.work_dir / "provisioner/containers/t4/info.json"
    written = json.loads(t4_record.read_text())
    del written["image"]["manifest"]
    t4_record.write_text(json.dumps(written))
    # The tag moves on, and the store follows it.
    shutil.rmtree(place)
    shutil.move(build("2"), place)
    lazyfs("pull", image)
    kill_mount_process(rootfs)
    kill_mount_process(volume)
    kill_mount_process(old)
    kill_mount_process(Path(t4["volumes"][0]["rootfs"]))

    keep = ("t1", "t2", "t3", "t4")
    report = json.loads(lazyfs("recover", "--keep", *keep, check=False).stdout)
    assert report["remounted"] == ["t1", "t4"], report
    assert "gone from the store" in report["broken"]["t2"]  # not mounted from another image
    assert report["kept"] == ["t1", "t3", "t4"] and list(report["broken"]) == ["t2"]
    # The image the container was made from, under the writes it made.
    assert (rootfs / "version").read_text() == "version 1\n"
    assert (volume / "version").read_text() == "version 1\n"
    assert (rootfs / "mine").read_text() == "the container's own\n"
    for cid in ("t1", "t2", "t3", "t4"):
        lazyfs("destroy", cid)
    assert mounts_under(lazyfs.work_dir) == []
