"""A ``lazyfs mount`` record that cannot be read is listed at the mount point it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.cli_mount import list_mounts
from lazyfs.provision.devmount_list import mounts
from tests.support.mount_records import mount_record


def test_an_unreadable_record_is_listed_at_its_mount_point_for_umount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    broken = mount_record(work, tmp_path / "mnt")
    (broken / "image.json").write_text("{")  # as one being written, or damaged
    starting = mount_record(work, tmp_path / "other")
    (starting / "image.json").unlink()
    (starting / "mountpoint").unlink()  # a mount starting: nothing says where yet
    listed = mounts(work)
    assert [(item["mountpoint"], item["mount"]) for item in listed] == [
        (str(tmp_path / "mnt"), "unreadable"),
        (None, "unreadable"),
    ]
    assert str(broken) in listed[0]["problem"] and str(starting) in listed[1]["problem"]
    # The table names it too: what `lazyfs umount` is given.
    assert list_mounts(work, as_json=False) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[1:] == [
        ["-", str(tmp_path / "mnt"), "-", "unreadable"],
        ["-", "-", "-", "unreadable"],
    ]
