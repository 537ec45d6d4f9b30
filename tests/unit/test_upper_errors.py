"""The upper refuses with UpperError (errno and facts); only the handler boundary speaks FUSE."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pyfuse3
import pytest

from lazyfs.blobs.ranges import LocalTars
from lazyfs.fs import upper_copy
from lazyfs.fs.boundary import fuse_errors
from lazyfs.fs.upper import OPAQUE_XATTR, Upper, UpperError
from lazyfs.index.formats import build_index
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from tests.support.images import Entry, write_layer
from tests.support.loopfs import loop_filesystem


def upper_of(tmp_path: Path) -> Upper:
    blob = write_layer([Entry("etc", "dir"), Entry("etc/passwd", data=b"x")], tmp_path / "0.tar")
    index = build_index(digest_bytes(blob.read_bytes()), blob, tmp_path)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return Upper(merge([index]), upper, work, LocalTars({}))


def test_the_upper_loads_no_fuse_code() -> None:
    probe = "import sys, lazyfs.fs.upper; print('pyfuse3' in sys.modules)"
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "False"


def test_a_refusal_names_what_was_refused(tmp_path: Path) -> None:
    upper = upper_of(tmp_path)
    with pytest.raises(UpperError) as refused:
        upper.remove(ROOT_INO, b"nope", directory=False)
    assert refused.value.errno == errno.ENOENT
    assert str(refused.value) == "ENOENT: no b'nope' in directory 1"
    etc = upper.lookup(ROOT_INO, b"etc")
    assert etc is not None
    with pytest.raises(UpperError) as refused:
        upper.remove(ROOT_INO, b"etc", directory=False)
    assert (refused.value.errno, refused.value.what) == (
        errno.EISDIR,
        "b'etc' in directory 1 is a directory",
    )


class Handlers:
    """Handlers failing the ways a writable mount's handlers can."""

    @fuse_errors
    async def refuse(self, number: int) -> None:
        raise UpperError(number, "what the upper knows")

    @fuse_errors
    async def full(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    @fuse_errors
    async def broken(self) -> None:
        raise OSError(errno.EBADMSG, "Bad message")


@pytest.mark.parametrize("number", [errno.ENOENT, errno.EXDEV, errno.ENOTEMPTY, errno.ENODATA])
async def test_the_boundary_answers_a_refusal_with_its_errno_quietly(
    number: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO), pytest.raises(pyfuse3.FUSEError) as answer:
        await Handlers().refuse(number)
    assert answer.value.errno == number
    assert caplog.records == []


async def test_the_boundary_passes_a_full_upper_on_and_turns_the_rest_into_eio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(pyfuse3.FUSEError) as answer:
        await Handlers().full()
    assert answer.value.errno == errno.ENOSPC
    with pytest.raises(pyfuse3.FUSEError) as answer:
        await Handlers().broken()
    assert answer.value.errno == errno.EIO
    assert [r.levelname for r in caplog.records] == ["ERROR", "ERROR"]


def test_a_copy_up_that_fails_halfway_leaves_nothing_in_the_way_of_the_next(
    tmp_path: Path,
) -> None:
    # ext4 keeps an xattr value in one block: an image's 8,000-byte one (the index takes
    # up to 64 KiB) is ENOSPC there. The copy-up made the directory, then failed on its
    # xattrs: every later write below it was EEXIST, EIO, until the next mount, which
    # loaded the half-made directory without its xattrs.
    big = {"user.big": b"x" * 8000}
    blob = write_layer(
        [
            Entry("big", "dir", mode=0o755, xattrs=big),
            Entry("big/f", data=b"x"),
            Entry("link", "symlink", target="big", xattrs={"trusted.big": b"y" * 8000}),
        ],
        tmp_path / "0.tar",
    )
    index = build_index(digest_bytes(blob.read_bytes()), blob, tmp_path)
    with loop_filesystem(tmp_path / "disk", 64) as disk:
        upper, work = disk / "upper", disk / "work"
        upper.mkdir()
        work.mkdir()
        view = Upper(merge([index]), upper, work, LocalTars({}))
        directory, link = view.lookup(ROOT_INO, b"big"), view.lookup(ROOT_INO, b"link")
        assert directory is not None and link is not None
        for name in (b"n1", b"n2"):
            with pytest.raises(OSError) as refused:
                view.new(directory.ino, name, stat.S_IFREG | 0o644, 0, 0)
            assert refused.value.errno == errno.ENOSPC
        for _ in range(2):
            with pytest.raises(OSError) as refused:
                view.copy_up_meta(link)
            assert refused.value.errno == errno.ENOSPC
        assert os.listdir(upper) == [] and os.listdir(work) == []


def test_what_a_killed_mount_left_in_work_to_be_placed_is_cleared_and_nothing_else(
    tmp_path: Path,
) -> None:
    # Entries are made whole in work and renamed into the upper. A mount killed in
    # between left `new-N`, directory or file, which the next mount's Nth entry met.
    blob = write_layer([Entry("etc", "dir"), Entry("etc/passwd", data=b"x")], tmp_path / "0.tar")
    index = build_index(digest_bytes(blob.read_bytes()), blob, tmp_path)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    (work / "new-0").mkdir(parents=True)
    (work / "new-1").write_text("")
    (work / "work").mkdir()  # kernel overlayfs' own, had it been mounted over these
    view = Upper(merge([index]), upper, work, LocalTars({}))
    assert os.listdir(work) == ["work"]
    view.new(ROOT_INO, b"d", stat.S_IFDIR | 0o755, 0, 0)
    view.new(ROOT_INO, b"f", stat.S_IFREG | 0o644, 0, 0)
    assert sorted(os.listdir(upper)) == ["d", "f"] and os.listdir(work) == ["work"]


def test_without_rename_exchange_a_directory_over_a_whiteout_still_goes_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An upper on a filesystem without RENAME_EXCHANGE (renameat2 says EINVAL) still
    # takes a new directory where a lower one was deleted (a file replaces the whiteout
    # with a rename): the whiteout waits beside it, then goes.
    def no_exchange(*args: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(upper_copy, "exchange_at", no_exchange)
    blob = write_layer([Entry("d", "dir"), Entry("f", data=b"x")], tmp_path / "0.tar")
    index = build_index(digest_bytes(blob.read_bytes()), blob, tmp_path)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    view = Upper(merge([index]), upper, work, LocalTars({}))
    for name, kind in ((b"d", stat.S_IFDIR), (b"f", stat.S_IFREG)):
        view.remove(ROOT_INO, name, directory=kind == stat.S_IFDIR)
        assert stat.S_ISCHR(os.lstat(upper / os.fsdecode(name)).st_mode)  # a whiteout
        view.new(ROOT_INO, name, kind | 0o700, 0, 0)
        made = os.lstat(upper / os.fsdecode(name))
        assert stat.S_IFMT(made.st_mode) == kind and stat.S_IMODE(made.st_mode) == 0o700
    assert os.getxattr(upper / "d", OPAQUE_XATTR) == b"y"
    assert os.listdir(work) == []
