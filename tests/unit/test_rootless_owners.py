"""The ``user.rootlesscontainers`` record of an image's owner, as a user other than root
applies layers for the copy backend: its bytes (those ``umoci unpack --rootless`` 0.4.7
writes, read off its output) and when it is written, replaced or removed."""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

import pytest

from backends.apply import apply_layer
from backends.rootless_owners import owner_record
from tests.support.tar_members import Member, dir_, layer, reg, tar_info, xattrs

XATTR = "user.rootlesscontainers"


@pytest.mark.parametrize(
    ("uid", "gid", "record"),
    [
        (0, 0, None),
        (33, 33, "08211021"),
        (33, 0, "082110ffffffff0f"),
        (0, 33, "08ffffffff0f1021"),
        (1, 2, "08011002"),
        (65534, 65534, "08feff0310feff03"),
        (100000, 200000, "08a08d0610c09a0c"),
        (2**32 - 2, 7, "08feffffff0f1007"),
    ],
)
def test_owner_record_bytes(uid: int, gid: int, record: str | None) -> None:
    assert owner_record(uid, gid) == (None if record is None else bytes.fromhex(record))


def _apply(root: Path, *members: Member, index: int = 0, rootless_owners: bool = True) -> None:
    apply_layer(root, layer(*members), layer=f"layer{index}", rootless_owners=rootless_owners)


def _record(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError as error:
        if error.errno != errno.ENODATA:
            raise
        return None


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # a user: owners are not set
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def test_the_layers_own_record_gives_way_to_the_header(root: Path) -> None:
    forged = xattrs(user_rootlesscontainers=bytes.fromhex("0801"))  # "owned by uid 1"
    root_file = tar_info("a", tarfile.REGTYPE, pax_headers=forged)
    www_file = tar_info("b", tarfile.REGTYPE, uid=33, gid=33, pax_headers=forged)
    _apply(root, (root_file, b""), (www_file, b""))
    assert _record(root / "a") is None
    assert _record(root / "b") == bytes.fromhex("08211021")


def test_a_directory_over_a_directory_takes_the_new_owner(root: Path) -> None:
    _apply(root, dir_("d", uid=33, gid=33), dir_("e", uid=33, gid=33))
    assert _record(root / "d") == bytes.fromhex("08211021")
    _apply(root, dir_("d"), dir_("e", uid=5, gid=33), index=1)
    assert _record(root / "d") is None
    assert _record(root / "e") == bytes.fromhex("08051021")


def test_without_rootless_owners_nothing_is_recorded(root: Path) -> None:
    # The layers the bind and overlay backends extract into the store stay as they were.
    _apply(root, reg("a", uid=33, gid=33), rootless_owners=False)
    assert _record(root / "a") is None
