"""`lazyfs ps` and `recover` read the mount table once per pass, not once per mount.

With a thousand containers the table has a thousand lines, and reading it
for each of them made both grow with the square of their number. What
``recover`` acts on (mounting again) is still asked with the table read
then: a snapshot older than a mount must not have one mounted over it.

Reads are counted by an audit hook on ``open`` of ``/proc/self/mountinfo``,
in this process: nothing of lazyfs is replaced. Needs root (it mounts).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from backends.base import Backend
from backends.mounts import looking_through, mount_points, mounts_under, unmount_all_under
from lazyfs.cli_ps import ps
from lazyfs.provision.provisioner import Provisioner
from lazyfs.provision.revive import check_kept
from lazyfs.provision.teardown import destroy_pass, remove_container
from providers.errors import BackendError
from tests.support.backend_variants import docker, make_provisioner, one_image_registry

pytestmark = pytest.mark.integration

MOUNTINFO = "/proc/self/mountinfo"
COUNT = 20
_opened: list[list[str]] = []  # while counting: the list each open of MOUNTINFO adds to
_hooked = threading.Lock()


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and args and args[0] == MOUNTINFO:
        for opened in _opened:
            opened.append(threading.current_thread().name)


@contextlib.contextmanager
def mountinfo_reads() -> Iterator[list[str]]:
    """The threads that opened the mount table within the block, one per read.

    An audit hook cannot be removed: it is added once and counts only here.
    """
    with _hooked:
        if not getattr(sys, "_lazyfs_mountinfo_hook", False):
            sys.addaudithook(_audit)
            sys._lazyfs_mountinfo_hook = True  # type: ignore[attr-defined]
    opened: list[str] = []
    _opened.append(opened)
    try:
        yield opened
    finally:
        _opened.remove(opened)


@contextlib.asynccontextmanager
async def many_containers(
    tmp_path: Path, count: int
) -> AsyncIterator[tuple[Provisioner, list[str]]]:
    """``count`` containers, each with a read-only overlay rootfs; all destroyed after."""
    prov = make_provisioner(tmp_path / "work", one_image_registry(tmp_path))
    ids = [f"c{n:02}" for n in range(count)]
    try:
        for cid in ids:
            await prov.provision(cid, docker("one"), "overlay")
        yield prov, ids
    finally:
        try:
            report = await prov.recover(keep=[])
            assert not report.failed, report.failed
        finally:
            if mounts_under(tmp_path):
                unmount_all_under(tmp_path)
    assert mounts_under(tmp_path) == []


async def test_ps_reads_the_mount_table_once_for_all_containers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with many_containers(tmp_path, COUNT) as (prov, ids):
        capsys.readouterr()
        with mountinfo_reads() as opened:
            assert ps(prov.root.parent, as_json=True) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(c["container_id"], c["mount"]) for c in listed] == [(c, "alive") for c in ids]
        # Once per mount (COUNT) before.
        assert len(opened) <= 2, opened


async def test_recover_reads_the_mount_table_once_for_all_kept_containers(tmp_path: Path) -> None:
    async with many_containers(tmp_path, COUNT) as (prov, ids):
        with mountinfo_reads() as opened:
            report = await prov.recover(keep=ids)
        assert report.kept == tuple(ids) and not report.broken and not report.remounted
        assert len(opened) <= 2, opened


async def test_recover_asks_again_before_mounting_over_what_it_found_unmounted(
    tmp_path: Path,
) -> None:
    async with many_containers(tmp_path, 1) as (prov, (cid,)):
        rootfs = prov.info(cid).rootfs
        subprocess.run(["umount", rootfs], check=True)  # as a reboot leaves it
        checked = check_kept(prov.containers, [cid])
        assert checked == {rootfs: "is not mounted"}
        # Mounted again after that check, before its container is acted on...
        assert (await prov.recover(keep=[cid])).remounted == (cid,)
        assert mount_points().count(rootfs) == 1
        # ...what the check found is not acted on: asked again, it works.
        assert prov._revive(cid, checked) is False
        assert mount_points().count(rootfs) == 1
        assert (rootfs / "etc" / "motd").read_text() == "hi\n"


async def test_recover_reads_the_mount_table_once_per_destroyed_mount_not_per_look(
    tmp_path: Path,
) -> None:
    async with many_containers(tmp_path, COUNT) as (prov, ids):
        with mountinfo_reads() as opened:
            report = await prov.recover(keep=[])
        assert report.destroyed == tuple(ids) and not report.failed
        assert mounts_under(tmp_path) == []
        # Each destroy's own unmount changes the table: that is read again, once, after
        # it. Six times per container before (each backend and teardown look, twice).
        assert len(opened) <= COUNT + 3, opened


def test_a_look_sees_a_mount_made_after_it_and_nothing_is_deleted_through_it(
    tmp_path: Path,
) -> None:
    # A bind mount from the same filesystem: remove_tree cannot tell it by st_dev.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data").write_text("keep me\n")
    home = tmp_path / "work" / "containers" / "c1"
    inside = home / "backends" / "none" / "rootfses" / "r" / "vol"
    inside.mkdir(parents=True)
    with destroy_pass() as look:
        look.points()  # its first read
        with looking_through(look), mountinfo_reads() as opened:
            assert mounts_under(home) == []
        assert opened == []  # the table unchanged: not read again
        subprocess.run(["mount", "--bind", shared, inside], check=True)
        try:
            remove_container(home, _no_backend, look)
        finally:
            if mounts_under(tmp_path):
                unmount_all_under(tmp_path)
    assert not home.exists()
    assert (shared / "data").read_text() == "keep me\n"


def _no_backend(name: str) -> Backend:
    raise BackendError(f"no backend {name}")
