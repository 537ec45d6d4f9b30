"""Teardown shared by the fixtures that make real FUSE mounts, and what a mount was asked."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lazyfs.fs import mount as lazy_mount
from tests.support.processes import zombie

if TYPE_CHECKING:
    from tests.support.images import Entry


def need_fuse() -> None:
    """Skip unless real FUSE mounts can be made here: root, /dev/fuse and fusermount3."""
    usable = os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3")
    if os.geteuid() != 0 or not usable:
        pytest.skip("needs root, /dev/fuse and fusermount3")


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: gone, or a zombie (ended, its parent has yet to
    reap it, which unmount does not wait for), it does not."""
    return not zombie(pid)


def kill_mount_process(rootfs: Path) -> None:
    """SIGKILL the fuse mount process of a provisioned ``rootfs`` and wait until it is gone."""
    pid = int((rootfs.parent.parent / "scratch" / rootfs.name / "pid").read_text())
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGKILL)
        select.select([pidfd], [], [])  # readable once the process has exited
    finally:
        os.close(pidfd)


def runs_mount_main(pid: int | str, mountpoint: Path) -> bool:
    """Whether ``pid`` is a live ``lazyfs.fs.mount_main`` process for ``mountpoint``.

    One that exited is not; nor is another test's (tests may run beside others).
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"lazyfs.fs.mount_main" in argv and os.fsencode(mountpoint) in argv


def unmount_all(made: list[tuple[Path, int]]) -> None:
    """Unmounts every ``(point, pid)``, then checks that each mount and its process are gone.

    Every mount is taken down before the first failure is raised, so one failing
    unmount does not leave the others behind.
    """
    errors: list[BaseException] = []
    for point, pid in made:
        try:
            lazy_mount.unmount(point, pid=pid)
        except Exception as error:
            errors.append(error)
    if errors:
        raise BaseExceptionGroup("unmount failed", errors) if len(errors) > 1 else errors[0]
    for point, pid in made:
        assert not lazy_mount.is_mounted(point)
        assert not alive(pid)


def walk_and_read(root: Path) -> tuple[int, int]:
    """lstat every entry under ``root`` and read every regular file; (directories, files)."""
    directories = files = 0
    for top, _, names in os.walk(root):
        directories += 1
        for name in names:
            path = os.path.join(top, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                files += 1
                with open(path, "rb") as file:
                    while file.read(1 << 16):
                        pass
    return directories, files


def requests(log: bytes) -> Counter[str]:
    """How many requests of each kind a ``--debug`` mount log shows; forgets left out.

    A request's line is written before it is answered, so a syscall that
    returned has its requests in the log already.
    """
    found = Counter(m.decode() for m in re.findall(rb"lazyfs\.requests: (\w+)\(", log))
    del found["forget"]  # the kernel drops inodes when it likes
    return found


@contextmanager
def debug_mounted(tmp_path: Path, layer: Sequence[Entry], *, writable: bool) -> Iterator[Path]:
    """One layer of ``tests.support.images.Entry`` items mounted with ``--debug`` (its log is
    ``tmp_path/mount.log``), read-only or copy-on-write; unmounted after, also on failure."""
    from lazyfs.store.disk import Store
    from tests.support.blob_sources import store_files
    from tests.support.images import write_layer

    need_fuse()
    store = Store(tmp_path / "store")
    layers = store_files(store, [write_layer(list(layer), tmp_path / "layer.tar")])
    point = tmp_path / "m"
    point.mkdir()
    upper = work = None
    if writable:
        upper, work = tmp_path / "upper", tmp_path / "work"
        upper.mkdir()
        work.mkdir()
    made: list[tuple[Path, int]] = []
    try:
        pid = lazy_mount.mount(
            layers,
            point,
            store=store.root,
            log_path=tmp_path / "mount.log",
            upper=upper,
            work=work,
            debug=True,
        )
        made.append((point, pid))
        yield point
    finally:
        unmount_all(made)
