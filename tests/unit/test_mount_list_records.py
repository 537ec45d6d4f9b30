"""``lazyfs.provision.devmount_list``: mount records read as ``lazyfs mount`` lists them."""

from __future__ import annotations

from pathlib import Path

from lazyfs.provision.devmount_list import mounts
from tests.support.mount_records import mount_record as record


def test_records_are_listed_by_mount_point_gone_and_unreadable_ones_too(tmp_path: Path) -> None:
    work = tmp_path / "work"
    record(work, tmp_path / "b", writable=True)
    record(work, tmp_path / "a")
    broken = record(work, tmp_path / "c")
    (broken / "image.json").write_text("{")  # as one being written, or damaged
    listed = mounts(work)
    assert listed[:2] == [
        {"mountpoint": str(tmp_path / "a"), "image": "docker.io/library/busybox:latest",
         "digest": "sha256:ab", "platform": "linux/amd64", "mode": "ro", "writable": False,
         "pid": 4242, "mount": "not mounted"},
        {"mountpoint": str(tmp_path / "b"), "image": "docker.io/library/busybox:latest",
         "digest": "sha256:ab", "platform": "linux/amd64", "mode": "rw", "writable": True,
         "pid": 4242, "mount": "not mounted"},
    ]  # fmt: skip
    assert listed[2]["mount"] == "unreadable" and str(broken) in listed[2]["problem"]
    assert len(listed) == 3


def test_a_work_dir_that_does_not_exist_lists_nothing_and_stays_so(tmp_path: Path) -> None:
    assert mounts(tmp_path / "work") == []
    assert list(tmp_path.iterdir()) == []
