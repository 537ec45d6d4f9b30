"""`lazyfs ps`: the provisioned containers, their images, volumes and mounts; creates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs
from tests.support.statfs_calls import asked_side_by_side

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("ps-volume-image")
    layout = images.build_oci_image(work, [[images.Entry("hello", data=b"hi\n")]], "v1")
    return f"oci:{layout}:v1"


def test_ps_lists_containers_with_their_volumes_and_mounts(lazyfs: Lazyfs, data_image: str) -> None:
    assert lazyfs("ps").stdout.split() == [
        "ID", "BACKEND", "IMAGE", "ROOTFS", "VOLUMES", "WRITABLE", "MOUNT",
    ]  # fmt: skip
    assert json.loads(lazyfs("ps", "--json").stdout) == []
    copy = json.loads(lazyfs("provision", "a-copy", "busybox", "--backend", "copy").stdout)
    over = json.loads(
        lazyfs("provision", "b-over", "busybox", "--backend", "overlay", "--writable",
               "-v", f"/data:{data_image}").stdout
    )  # fmt: skip
    listed = json.loads(lazyfs("ps", "--json").stdout)
    assert [c["container_id"] for c in listed] == ["a-copy", "b-over"]
    a, b = listed
    assert (a["backend"], a["rootfs"], a["writable"]) == ("copy", copy["rootfs"], True)
    assert a["image"] == "docker.io/library/busybox:latest"
    assert a["mount"] == "directory" and a["volumes"] == []
    assert (b["backend"], b["writable"], b["mount"]) == ("overlay", True, "alive")
    (volume,) = b["volumes"]
    assert volume == {
        "container_path": "/data",
        "mode": "ro",
        "image": data_image,
        "rootfs": over["volumes"][0]["rootfs"],
        "writable": False,
        "mount": "alive",
    }
    rows = [line.split() for line in lazyfs("ps").stdout.splitlines()[1:]]
    assert rows == [
        ["a-copy", "copy", "docker.io/library/busybox:latest", copy["rootfs"], "-", "yes",
         "directory"],
        ["b-over", "overlay", "docker.io/library/busybox:latest", over["rootfs"],
         f"/data:{data_image}:ro", "yes", "alive"],
    ]  # fmt: skip

    # A volume gone as after a reboot shows on its container.
    subprocess.run(["umount", volume["rootfs"]], check=True)
    b = json.loads(lazyfs("ps", "--json").stdout)[1]
    assert (b["mount"], b["rootfs_mount"], b["volumes"][0]["mount"]) == (
        "not mounted",
        "alive",
        "not mounted",
    )
    lazyfs("recover")


def test_ps_shows_an_unfinished_provision(lazyfs: Lazyfs) -> None:
    # A provision killed before its record was written leaves this much.
    home = lazyfs.work_dir / "provisioner" / "containers" / "half"
    home.mkdir(parents=True)
    (home / "provisioning").write_text(f"{os.getpid()}\n")
    listed = json.loads(lazyfs("ps", "--json").stdout)
    assert listed == [
        {
            "container_id": "half",
            "mount": "incomplete",
            "problem": "incomplete: its provision did not finish",
        }
    ]
    assert lazyfs("ps").stdout.splitlines()[1].split() == ["half", *"-" * 5, "incomplete"]


@pytest.mark.parametrize("argv", [["ps"], ["ps", "--json"], ["help", "ps"]])
def test_ps_creates_nothing(tmp_path: Path, argv: list[str]) -> None:
    work = tmp_path / "work"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LAZYFS_")}
    result = subprocess.run(
        [sys.executable, "-m", "lazyfs", "--work_dir", str(work), *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not work.exists()
    assert list(cwd.iterdir()) == []


def test_ps_and_recover_answer_with_a_mount_whose_process_is_stopped(lazyfs: Lazyfs) -> None:
    info = json.loads(lazyfs("provision", "f1", "busybox", "--backend", "fuse").stdout)
    rootfs = Path(info["rootfs"])
    pid = int((rootfs.parent.parent / "scratch" / rootfs.name / "pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        # Each would wait for ever on the mount's answer (bounds a failing test only).
        shown = json.loads(lazyfs("ps", "--json", timeout=60).stdout)
        assert [(c["container_id"], c["mount"]) for c in shown] == [("f1", "not answering")]
        kept = lazyfs("recover", "--keep", "f1", check=False, timeout=60)
        assert list(json.loads(kept.stdout)["broken"]) == ["f1"], kept.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    lazyfs("destroy", "f1")


def test_ps_asks_mounts_that_do_not_answer_side_by_side(lazyfs: Lazyfs) -> None:
    out, _ = asked_side_by_side(lazyfs, "ps", "--json")
    states = [(c["container_id"], c["mount"]) for c in json.loads(out)]
    assert states == [("f1", "alive"), ("f2", "alive")]
    lazyfs("destroy", "f1")
    lazyfs("destroy", "f2")
