"""A writable mount whose upper directory's filesystem is full or read-only.

An rm or rmdir that fails there changes nothing: the name stays in the
mount, readable, and in the upper a remount loads; once there is room
again, the same rm works and a remount keeps it.  The upper and work are
on a small tmpfs the test mounts (64 inodes: every entry the upper makes
takes one, as a copied-up directory takes a block on ext4), fills or makes
read-only, and unmounts afterwards, also when the test fails; the lazyfs
mounts are taken down before it.  Needs root (mount fails without it).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.support.cow_mounts import CowMounts
from tests.support.images import Entry
from tests.support.small_disks import no_room, small_disk

pytestmark = pytest.mark.integration

LAYERS = [[Entry("etc", "dir"), Entry("etc/passwd", data=b"root"), Entry("etc/gone", "dir")]]


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_an_rm_the_upper_has_no_room_for_fails_and_changes_nothing(
    mounts: CowMounts, tmp_path: Path, how: str
) -> None:
    made = mounts.mount(LAYERS)  # for its layers in the store; its upper is not used
    mounts.unmount(made)
    with small_disk(tmp_path / "disk") as disk:
        (disk / "upper").mkdir()
        (disk / "work").mkdir()
        first = mounts.mount_again(
            dataclasses.replace(made, upper=disk / "upper", work=disk / "work")
        )
        etc = first.root / "etc"
        try:
            with no_room(disk, how) as number:
                with pytest.raises(OSError) as refused:
                    (etc / "passwd").unlink()
                assert refused.value.errno == number
                with pytest.raises(OSError) as refused:
                    (etc / "gone").rmdir()
                assert refused.value.errno == number
                assert sorted(os.listdir(etc)) == ["gone", "passwd"]
                assert (etc / "passwd").read_bytes() == b"root"
        finally:
            mounts.unmount(first)
        second = mounts.mount_again(first)
        etc = second.root / "etc"
        try:
            assert sorted(os.listdir(etc)) == ["gone", "passwd"]
            # Room again: the same rm and rmdir work, and a remount keeps them.
            (etc / "passwd").unlink()
            (etc / "gone").rmdir()
            assert os.listdir(etc) == []
        finally:
            mounts.unmount(second)
        third = mounts.mount_again(first)
        try:
            assert os.listdir(third.root / "etc") == []
        finally:
            mounts.unmount(third)
