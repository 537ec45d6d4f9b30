"""What a failed mount says: its process's answer with what libfuse or fusermount3 logged
(the log goes with the record), and a writable one asked by a user other than root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.fs.mount import mount_recorded
from lazyfs.fs.mount_wire import failure
from lazyfs.provision.devmount import check_mountpoint, unmount_image
from providers.errors import NotFound, UsageError

FUSE_SAID = "fuse: failed to open /dev/fuse: Permission denied"


@pytest.mark.parametrize(
    ("answer", "log", "expected"),
    [
        (b"RuntimeError: fuse_session_mount failed", f"start\n{FUSE_SAID}\n",
         f"RuntimeError: fuse_session_mount failed ({FUSE_SAID})"),
        (b"", f"{FUSE_SAID}\nTraceback: ...\nRuntimeError: x\n", f"RuntimeError: x ({FUSE_SAID})"),
        (b"", "fusermount3: user has no write access to mountpoint /m\n",
         "fusermount3: user has no write access to mountpoint /m"),
        (b"BadImage: no", "indexing\n", "BadImage: no"),
        (b"", "", "the mount process died"),
    ],
)  # fmt: skip
def test_a_failure_says_what_fuse_said(
    tmp_path: Path, answer: bytes, log: str, expected: str
) -> None:
    path = tmp_path / "mount.log"
    path.write_text(log)
    assert failure(answer, path) == expected
    assert failure(b"gone", tmp_path / "none.log") == "gone"


def test_a_writable_mount_by_another_user_than_root_is_refused_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    record = tmp_path / "record"
    record.mkdir()
    with pytest.raises(UsageError, match="a writable fuse mount needs root"):
        mount_recorded(record, [], tmp_path, store=tmp_path, writable=True)
    assert list(record.iterdir()) == []


def test_lazyfs_mount_writable_by_another_user_than_root_is_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="--writable needs root"):
        check_mountpoint(tmp_path, suid=False, dev=False, writable=True)


def test_a_missing_mount_point_is_said_to_be_missing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UsageError) as refused:
        check_mountpoint(missing, suid=False, dev=False)
    assert str(refused.value) == f"mount point {missing} does not exist"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError) as refused:
        check_mountpoint(tmp_path / "file", suid=False, dev=False)
    assert str(refused.value) == f"mount point {tmp_path}/file is not a directory"


def test_umount_of_no_mount_says_so_once_the_cli_puts_lazyfs_before_it(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as refused:
        unmount_image(tmp_path / "work", tmp_path)
    # The CLI prints "lazyfs: " and this: the word is not said twice.
    assert str(refused.value) == f"no lazyfs mount at {tmp_path} (with this --work_dir)"
