"""A remove, rename or link of the upper happens whole or not at all: in the view and on disk.

The rule: an operation that fails changes nothing anyone sees, neither the
mount's view now nor what a remount loads from the upper; one that succeeds
is in both.  In-process, no FUSE: a second ``Upper`` over the same upper and
work is the remount.

Two ways to fail: the upper's own filesystem runs out of room (a small tmpfs
of the test's own whose inodes run out, as an ext4 runs out of blocks for a
copied-up directory) or turns read-only, or one syscall that writes fails on
purpose, each in turn, so that every step of each operation is seen failing.
The tmpfs needs root (mount fails without it); it is unmounted afterwards,
also when a test fails.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from lazyfs.blobs.ranges import LocalTars
from lazyfs.fs.upper import Upper
from lazyfs.index.formats import build_index
from lazyfs.index.model import LayerIndex
from lazyfs.tree.merge import ROOT_INO, merge
from providers.digest import digest_bytes
from tests.support.images import Entry, write_layer
from tests.support.small_disks import no_room, small_disk

LAYER = [
    Entry("etc", "dir"),
    Entry("etc/passwd", data=b"root"),
    Entry("etc/shadow", data=b"secret"),
    Entry("etc/empty"),
    Entry("etc/gone", "dir"),
    Entry("etc/full", "dir"),
    Entry("etc/full/in", data=b"in"),
    Entry("etc/old", "dir"),
    Entry("etc/old/x", data=b"x"),
    Entry("up", "dir"),
    Entry("up/f"),
    Entry("up/d", "dir"),
]


def index_of(tmp_path: Path) -> LayerIndex:
    blob = write_layer(LAYER, tmp_path / "0.tar")
    return build_index(digest_bytes(blob.read_bytes()), blob, tmp_path)


def open_view(index: LayerIndex, where: Path) -> Upper:
    """A mount's state over ``where/upper``: a fresh one, or one loaded as a remount."""
    (where / "upper").mkdir(parents=True, exist_ok=True)
    (where / "work").mkdir(exist_ok=True)
    return Upper(merge([index]), where / "upper", where / "work", LocalTars({}))


def shown(view: Upper) -> dict[str, str]:
    """Every path the view shows, with its kind and size (a file's) or listing (a directory's)."""
    found: dict[str, str] = {}
    todo = [(ROOT_INO, "")]
    while todo:
        ino, path = todo.pop()
        for name, child in view.listing(ino):
            node = view.node(child)
            where = f"{path}/{os.fsdecode(name)}"
            if node.children is not None:
                found[where] = f"dir {sorted(node.children)}"
                todo.append((child, where))
            else:
                found[where] = f"{stat.S_IFMT(node.mode):o} {node.size}"
    return found


def ino(view: Upper, *names: bytes) -> int:
    here = ROOT_INO
    for name in names:
        node = view.lookup(here, name)
        assert node is not None
        here = node.ino
    return here


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_removing_a_lower_name_the_upper_has_no_room_for_changes_nothing(
    tmp_path: Path, how: str
) -> None:
    # The whiteout needs the parent copied up first (a directory made in upper): with
    # no room for it the name vanished from the view anyway, and came back on a remount.
    index = index_of(tmp_path)
    with small_disk(tmp_path / "disk") as disk:
        view = open_view(index, disk)
        before = shown(view)
        etc = ino(view, b"etc")
        with no_room(disk, how) as number:
            for name, directory in ((b"passwd", False), (b"gone", True)):
                with pytest.raises(OSError) as refused:
                    view.remove(etc, name, directory=directory)
                assert refused.value.errno == number
            assert shown(view) == before
        again = open_view(index, disk)
        assert shown(again) == before
        # With room again, the same removes work, and a remount keeps them.
        again.remove(ino(again, b"etc"), b"passwd", directory=False)
        again.remove(ino(again, b"etc"), b"gone", directory=True)
        after = shown(again)
        assert "/etc/passwd" not in after and "/etc/gone" not in after
        assert shown(open_view(index, disk)) == after


async def test_a_rename_with_no_room_for_the_old_names_whiteout_changes_nothing(
    tmp_path: Path,
) -> None:
    # The file moved in upper, then the whiteout at its old name could not be made:
    # the view had moved it, and a remount showed the lower file at the old name again.
    index = index_of(tmp_path)
    with small_disk(tmp_path / "disk") as disk:
        view = open_view(index, disk)
        etc = ino(view, b"etc")
        view.copy_up_meta(view.node(ino(view, b"etc", b"empty")))  # wholly in upper
        before = shown(view)
        with no_room(disk, "full"):
            with pytest.raises(OSError) as refused:
                await view.rename(etc, b"empty", etc, b"moved", 0)
            assert refused.value.errno == errno.ENOSPC
            assert shown(view) == before
        assert shown(open_view(index, disk)) == before
        await view.rename(etc, b"empty", etc, b"moved", 0)
        after = shown(view)
        assert "/etc/empty" not in after and "/etc/moved" in after
        assert shown(open_view(index, disk)) == after


# -- every step failing in turn -----------------------------------------------------------

# The syscalls by which the upper makes or moves entries.
WRITES = ("rename", "mknod", "link", "mkdir", "setxattr", "unlink", "rmdir")


class OneFails:
    """Makes the ``at``-th of the calls in ``WRITES`` fail with ENOSPC, counting from 1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
        self.at = at
        self.calls = 0
        for name in WRITES:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, call: Callable[..., object]) -> Callable[..., object]:
        def failing(*args: object, **kwargs: object) -> object:
            self.calls += 1
            if self.calls == self.at:
                raise OSError(errno.ENOSPC, "No space left on device (on purpose)")
            return call(*args, **kwargs)

        return failing


def prepare(view: Upper) -> None:
    """Copy up what the operations below work on, so that they change upper entries."""
    view.copy_up_meta(view.node(ino(view, b"up", b"f")))
    view.copy_up_meta(view.node(ino(view, b"up", b"d")))
    view.remove(ino(view, b"up"), b"f", directory=False)  # a whiteout at up/f
    view.new(ino(view, b"up"), b"f", stat.S_IFREG | 0o644, 0, 0)  # an upper file over it
    view.new(ino(view, b"up"), b"g", stat.S_IFREG | 0o600, 0, 0)
    view.new(ino(view, b"up"), b"mine", stat.S_IFDIR | 0o755, 0, 0)  # upper's own
    view.remove(ino(view, b"etc"), b"shadow", directory=False)  # a whiteout at etc/shadow
    view.remove(ino(view, b"etc", b"full"), b"in", directory=False)  # only a whiteout in it
    view.remove(ino(view, b"etc", b"old"), b"x", directory=False)
    view.remove(ino(view, b"etc"), b"old", directory=True)  # a lower directory deleted


async def rename_file_over_upper_file(view: Upper) -> None:
    await view.rename(ino(view, b"up"), b"g", ino(view, b"up"), b"f", 0)


async def rename_lower_file_away(view: Upper) -> None:
    await view.rename(ino(view, b"etc"), b"passwd", ino(view, b"up"), b"passwd", 0)


async def rename_dir_over_whiteout(view: Upper) -> None:
    # Made opaque, or the deleted lower directory's file shows in it on a remount.
    await view.rename(ino(view, b"up"), b"mine", ino(view, b"etc"), b"old", 0)


async def rename_dir_over_dir_of_whiteouts(view: Upper) -> None:
    await view.rename(ino(view, b"up"), b"d", ino(view, b"etc"), b"full", 0)


async def remove_upper_file_over_lower(view: Upper) -> None:
    view.remove(ino(view, b"up"), b"f", directory=False)


async def remove_dir_of_whiteouts(view: Upper) -> None:
    view.remove(ino(view, b"etc"), b"full", directory=True)


async def remove_lower_name(view: Upper) -> None:
    view.remove(ino(view, b"etc"), b"passwd", directory=False)


async def link_over_whiteout(view: Upper) -> None:
    await view.link(ino(view, b"up", b"f"), ino(view, b"etc"), b"shadow")


async def exchange_dirs(view: Upper) -> None:
    await view.rename(ino(view, b"up"), b"mine", ino(view, b"etc"), b"gone", 2)


OPERATIONS = [
    rename_file_over_upper_file,
    rename_lower_file_away,
    rename_dir_over_whiteout,
    rename_dir_over_dir_of_whiteouts,
    remove_upper_file_over_lower,
    remove_dir_of_whiteouts,
    remove_lower_name,
    link_over_whiteout,
    exchange_dirs,
]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.__name__)
async def test_an_operation_failing_at_any_step_changes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: Callable[[Upper], Awaitable[None]],
) -> None:
    # What the operation does when nothing fails.
    index = index_of(tmp_path)
    model = open_view(index, tmp_path / "model")
    prepare(model)
    await operation(model)
    done = shown(model)
    assert shown(open_view(index, tmp_path / "model")) == done
    at = 1
    while True:
        where = tmp_path / f"try{at}"
        view = open_view(index, where)
        prepare(view)
        before = shown(view)
        with monkeypatch.context() as patched:
            failing = OneFails(patched, at)
            try:
                await operation(view)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                failed = True
            else:
                failed = False
        if failed:
            assert shown(view) == before, f"write {at} failed, the view changed"
            assert os.listdir(where / "work") == [], f"write {at} failed, work kept some"
            assert shown(open_view(index, where)) == before, f"write {at} failed, the upper changed"
            await operation(view)  # and the same again works, whole
        # Whole: done again, past its last write or with a failure only in its clean-up after.
        assert shown(view) == shown(open_view(index, where)) == done, f"write {at} failed"
        if failing.calls < at:
            break
        at += 1
    assert at > 1


async def test_what_a_killed_mount_left_set_aside_in_work_is_cleared_at_the_next_start(
    tmp_path: Path,
) -> None:
    # A directory set aside in work holds whiteouts until it is removed; a mount killed
    # in between left it, where the next mount's own temporaries are named.
    index = index_of(tmp_path)
    work = tmp_path / "work"
    for n in range(20):
        (work / f"gone-{n}").mkdir(parents=True)
        os.mknod(work / f"gone-{n}" / "x", stat.S_IFCHR, 0)
        os.mknod(work / f"gone-{n}-file", stat.S_IFCHR, 0)
    (work / "work").mkdir()  # kernel overlayfs' own, had it been mounted over these
    view = open_view(index, tmp_path)
    prepare(view)
    for operation in (rename_dir_over_dir_of_whiteouts, remove_upper_file_over_lower):
        await operation(view)  # each makes or sets aside something in work
    assert os.listdir(work) == ["work"]


async def test_a_rename_whose_undo_fails_too_keeps_what_was_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = index_of(tmp_path)
    view = open_view(index, tmp_path / "v")
    prepare(view)
    view.new(ino(view, b"etc"), b"shadow", stat.S_IFREG | 0o600, 0, 0)  # over its whiteout
    upper = tmp_path / "v" / "upper"
    (upper / "etc" / "shadow").write_bytes(b"the container's own")
    real = os.rename

    def failing(src: str, dst: str, **kwargs: int) -> None:
        # The whiteout at the old name cannot go in, nor can the file go back there.
        if dst == "shadow" and (src == "f" or str(src).startswith("gone-")):
            raise OSError(errno.EIO, "Input/output error (on purpose)")
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError):
        await view.rename(ino(view, b"etc"), b"shadow", ino(view, b"up"), b"f", 0)
    monkeypatch.undo()
    # Two failures in a row: the moved file is not replaced by the target set aside.
    assert (upper / "up" / "f").read_bytes() == b"the container's own"
