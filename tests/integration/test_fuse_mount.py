"""Real FUSE mounts through ``lazyfs.fs.mount``: up, read, down, by every way down.

Each test mounts through the ``mounted`` fixture, which unmounts and checks
that the mount process is gone whatever the test did, so a failing test
leaves neither a mount nor a process behind.  Every test that mounts runs on
both FUSE paths (``fuse_path``: no-open and open).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from backends.base import scratch_dir
from backends.fuse import FuseBackend
from backends.mounts import mount_problem
from lazyfs.fs import mount as lazy_mount
from lazyfs.index.stored import index_path, load_index
from lazyfs.store.blobs import StoreBlobs
from lazyfs.store.disk import Store
from providers.digest import Digest
from providers.errors import BackendError, NotFound, UnsafeLayer
from providers.manifest import Layer
from tests.support import fuse_paths, images
from tests.support.backend_variants import docker, make_provisioner
from tests.support.blob_sources import LocalFiles, store_files
from tests.support.fuse_mounts import (
    need_fuse,
    requests,
    runs_mount_main,
    unmount_all,
    walk_and_read,
)
from tests.support.images import Entry, whiteout, write_layer
from tests.support.kept_trees import drop_kept_trees, kept_tree_files
from tests.support.rich_image import need_tools

pytestmark = pytest.mark.integration

LAYERS = [
    [
        Entry("etc", "dir"),
        Entry("etc/hosts", data=b"127.0.0.1 localhost\n"),
        Entry("etc/gone", data=b"x"),
        Entry("big", data=b"0123456789" * 100_000),
    ],
    [whiteout("etc/gone"), Entry("etc/new", data=b"new\n", mode=0o600, uid=7)],
]


class Mount(Protocol):
    def __call__(self, point: Path, *, debug: bool = False) -> int: ...


Stored = tuple[Store, list[Layer]]


@pytest.fixture
def store(tmp_path: Path, fuse_path: str) -> Stored:
    """A store holding the layers of ``LAYERS``, and their descriptors."""
    need_fuse()
    lazy_store = Store(tmp_path / "store")
    blobs = [write_layer(entries, tmp_path / f"layer{i}.tar") for i, entries in enumerate(LAYERS)]
    return lazy_store, store_files(lazy_store, blobs)


@pytest.fixture
def mounted(store: Stored, tmp_path: Path) -> Iterator[Mount]:
    """Mounts the test image where asked; everything is taken down afterwards."""
    lazy_store, layers = store
    made: list[tuple[Path, int]] = []

    def mount(point: Path, *, debug: bool = False) -> int:
        point.mkdir(exist_ok=True)
        pid = lazy_mount.mount(
            layers,
            point,
            store=lazy_store.root,
            log_path=tmp_path / "mount.log",
            debug=debug,
        )
        made.append((point, pid))
        return pid

    try:
        yield mount
    finally:
        unmount_all(made)


def wait_exit(pid: int, timeout: float = 10.0) -> int | None:
    """The exit status of our child ``pid``, or None if it is still running at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    return None


def test_the_tree_reads_and_stays_the_same_across_mounts(
    store: Stored, mounted: Mount, tmp_path: Path
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    mounted(first)
    # Merged again, not loaded from the store: the numbering itself must be stable.
    lazy_store, layers = store
    drop_kept_trees(lazy_store.layers, [layer.digest for layer in layers])
    mounted(second)
    assert sorted(os.listdir(first / "etc")) == ["hosts", "new"]
    assert (first / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (first / "big").read_bytes() == b"0123456789" * 100_000
    new = os.stat(first / "etc" / "new")
    assert (new.st_mode & 0o7777, new.st_uid) == (0o600, 7)
    for name in ("etc", "etc/hosts", "etc/new", "big"):
        assert os.stat(first / name).st_ino == os.stat(second / name).st_ino
    assert os.statvfs(first).f_files >= 5
    with pytest.raises(OSError, match="Read-only"):
        (first / "etc" / "hosts").write_text("x")


def test_a_warm_tree_is_served_by_the_kernel_alone_without_open(
    mounted: Mount, fuse_path: str, tmp_path: Path
) -> None:
    mounted(tmp_path / "m", debug=True)
    log = tmp_path / "mount.log"
    walk_and_read(tmp_path / "m")
    first, warm = requests(log.read_bytes()), len(log.read_bytes())
    dirs, files = walk_and_read(tmp_path / "m")
    second = requests(log.read_bytes()[warm:])
    if fuse_path == fuse_paths.NO_OPEN:
        assert b"on the no-open path" in log.read_bytes()
        # One ENOSYS each tells the kernel to stop asking, for the whole mount.
        assert (first["open"], first["opendir"]) == (1, 1)
        assert not first["release"] and not first["releasedir"]
        assert second == {}
    else:  # release and releasedir are sent after close returns: not counted here
        assert (second["open"], second["opendir"]) == (files, dirs)


def test_a_damaged_index_is_built_again_unless_the_kept_tree_makes_it_unneeded(
    store: Stored, mounted: Mount, tmp_path: Path
) -> None:
    lazy_store, layers = store
    layers_dir = lazy_store.layers
    mounted(tmp_path / "a")
    kept = kept_tree_files(layers_dir, [layer.digest for layer in layers])
    assert all(path.is_file() for path in kept)
    stored = index_path(layers_dir, layers[0].digest)
    header = stored.read_text().partition("\n")[0]
    # A torn entries line: the kept tree needs only the header.
    stored.write_text(header + "\n[[")
    mounted(tmp_path / "b")
    assert (tmp_path / "b" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    # Without the trees the entries are needed: the mount builds the index again.
    for path in kept:
        path.unlink()
    mounted(tmp_path / "c")
    assert (tmp_path / "c" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert load_index(layers_dir, layers[0].digest) is not None
    assert all(path.is_file() for path in kept)


def test_mounts_map_one_packed_tree_and_refuse_a_damaged_one(
    store: Stored, mounted: Mount, tmp_path: Path
) -> None:
    lazy_store, layers = store
    first = mounted(tmp_path / "a")
    _, packed = kept_tree_files(lazy_store.layers, [layer.digest for layer in layers])
    second = mounted(tmp_path / "b")
    # Both serve from the one file, mapped: its pages are the page cache's, shared.
    for pid in (first, second):
        assert str(packed) in Path(f"/proc/{pid}/maps").read_text()
    whole = packed.read_bytes()
    packed.write_bytes(whole[:-40] + bytes([whole[-40] ^ 1]) + whole[-39:])
    third = mounted(tmp_path / "c")
    assert (tmp_path / "c" / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert sorted(os.listdir(tmp_path / "c" / "etc")) == ["hosts", "new"]
    assert b"building the packed tree again" in (tmp_path / "mount.log").read_bytes()
    assert packed.read_bytes() == whole
    assert str(packed) in Path(f"/proc/{third}/maps").read_text()
    # The first mounts read on from the file they mapped.
    assert (tmp_path / "a" / "etc" / "new").read_bytes() == b"new\n"


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_unmounts_cleanly(mounted: Mount, tmp_path: Path, number: int) -> None:
    point = tmp_path / "m"
    pid = mounted(point)
    os.kill(pid, number)
    assert wait_exit(pid) == 0
    assert not lazy_mount.is_mounted(point)
    assert "unmounting" in (tmp_path / "mount.log").read_text()


def test_an_unmount_from_outside_ends_the_process(mounted: Mount, tmp_path: Path) -> None:
    point = tmp_path / "m"
    pid = mounted(point)
    subprocess.run(["fusermount3", "-u", str(point)], check=True)
    assert wait_exit(pid) == 0


def test_a_mount_that_cannot_come_up_leaves_nothing(store: Stored, tmp_path: Path) -> None:
    lazy_store, layers = store
    before = set(os.listdir("/proc"))
    with pytest.raises(BackendError, match=r"mounting .* failed"):
        lazy_mount.mount(
            layers, tmp_path / "no-such-dir", store=lazy_store.root, log_path=tmp_path / "log"
        )
    spawned = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    assert not any(runs_mount_main(p, tmp_path / "no-such-dir") for p in spawned)


def test_a_hostile_layer_is_refused_as_itself_and_leaves_nothing(
    store: Stored, tmp_path: Path
) -> None:
    # The mount process indexes, and hands the refusal back: class, message, facts.
    lazy_store, _ = store
    [bad] = store_files(lazy_store, [write_layer([Entry("../escape")], tmp_path / "bad.tar")])
    point = tmp_path / "m"
    point.mkdir()
    before = set(os.listdir("/proc"))
    with pytest.raises(UnsafeLayer) as refused:
        lazy_mount.mount([bad], point, store=lazy_store.root, log_path=tmp_path / "log")
    assert refused.value.layer == bad.digest and "escape" in refused.value.entry
    assert str(refused.value).startswith(f"unsafe layer {bad.digest}: entry ")
    spawned = [p for p in set(os.listdir("/proc")) - before if p.isdigit()]
    assert not any(runs_mount_main(p, point) for p in spawned)
    assert not lazy_mount.is_mounted(point)
    assert load_index(lazy_store.layers, bad.digest) is None


def test_a_layer_missing_from_the_store_is_not_found(store: Stored, tmp_path: Path) -> None:
    lazy_store, layers = store
    missing = Layer(Digest("sha256:" + "0" * 64), layers[0].media_type, 1)
    point = tmp_path / "m"
    point.mkdir()
    with pytest.raises(NotFound, match=missing.digest):
        lazy_mount.mount([*layers, missing], point, store=lazy_store.root, log_path=tmp_path / "l")
    assert not lazy_mount.is_mounted(point)


def test_the_backend_refuses_no_layers_and_destroys_idempotently(tmp_path: Path) -> None:
    backend = FuseBackend(tmp_path / "store")
    rootfs = tmp_path / "c" / "rootfses" / "r"
    rootfs.parent.mkdir(parents=True)
    with pytest.raises(BackendError, match="at least one layer"):
        backend.provision([], LocalFiles([]), rootfs, writable=True)
    assert not rootfs.exists()
    backend.destroy(rootfs)
    backend.destroy(rootfs)


def test_destroy_cleans_up_after_a_killed_mount_process(store: Stored, tmp_path: Path) -> None:
    lazy_store, layers = store
    backend = FuseBackend(lazy_store.root)
    rootfs = tmp_path / "c" / "rootfses" / "r"
    rootfs.parent.mkdir(parents=True)
    try:
        backend.provision(layers, StoreBlobs(lazy_store), rootfs, writable=False)
        assert (rootfs / "etc" / "new").read_bytes() == b"new\n"
        pid = int((scratch_dir(rootfs) / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
        with pytest.raises(OSError):  # ENOTCONN: the mount is dead, not gone
            os.listdir(rootfs)
    finally:
        backend.destroy(rootfs)
    assert not lazy_mount.is_mounted(rootfs)
    assert not os.path.lexists(rootfs) and not scratch_dir(rootfs).exists()


def test_a_killed_mount_is_seen_dead_though_the_kernel_caches_its_root(
    store: Stored, tmp_path: Path
) -> None:
    lazy_store, layers = store
    backend = FuseBackend(lazy_store.root)
    rootfs = tmp_path / "c" / "rootfses" / "r"
    rootfs.parent.mkdir(parents=True)
    try:
        backend.provision(layers, StoreBlobs(lazy_store), rootfs, writable=False)
        assert mount_problem(rootfs) is None
        os.stat(rootfs)  # the root's attributes, cached by the kernel for as long as we said
        pid = int((scratch_dir(rootfs) / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
        assert os.stat(rootfs)  # still answered from that cache: not how to tell
        assert (mount_problem(rootfs) or "").startswith("is a dead mount")
    finally:
        backend.destroy(rootfs)


@pytest.mark.parametrize("writable", [False, True], ids=["ro", "rw"])
async def test_recover_cleans_a_container_whose_mount_process_died(
    tmp_path: Path, writable: bool, fuse_path: str
) -> None:
    need_fuse()
    need_tools()
    layout = images.build_oci_image(tmp_path / "image", LAYERS, "latest")
    images.to_docker_archive(layout, "latest", tmp_path / "images" / "two:latest.tar", "two")
    prov = make_provisioner(tmp_path / "work", tmp_path / "images")
    home = prov.containers / "c1"
    info = await prov.provision("c1", docker("two"), "fuse", writable=writable)
    scratch = scratch_dir(info.rootfs)
    try:
        assert (info.rootfs / "etc" / "hosts").is_file()
        if writable:  # the upper dir has something to lose
            (info.rootfs / "etc" / "hosts").write_bytes(b"changed\n")
            (info.rootfs / "made").mkdir()
            assert (scratch / "upper" / "etc" / "hosts").read_bytes() == b"changed\n"
        pid = int((scratch / "pid").read_text())
        os.kill(pid, signal.SIGKILL)
        assert wait_exit(pid) == -signal.SIGKILL
        report = await prov.recover(keep=[])
        assert report.destroyed == ("c1",)
    finally:
        await prov.destroy("c1")
    assert not home.exists() and not scratch.exists()
    assert not lazy_mount.is_mounted(info.rootfs)
