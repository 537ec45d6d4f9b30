"""The overlay backend's own promises, beyond the conformance suite.

Images of many layers mount however long the store path; runc runs in an
overlay rootfs; destroy leaves no mount and no upper or work directory;
containers of one image share the extracted layers and do not disturb each
other; the default backend is overlay where the probe says it works.  Every
test that mounts destroys in a ``finally`` (``provisioned``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from backends.base import scratch_dir
from backends.mounts import mounts_under
from backends.names import default_backend_name
from backends.overlay import MAX_OPTIONS, OverlayBackend, overlay_usable
from lazyfs.provision import runtime
from lazyfs.provision.provisioner import Provisioner, ProvisionInfo
from lazyfs.store.disk import Store
from tests.support import images
from tests.support.backend_variants import (
    Variant,
    assert_same_tree,
    docker,
    make_provisioner,
    provisioned,
)
from tests.support.images import BASE_MTIME_NS, Entry, whiteout

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

REPO = Path(__file__).resolve().parents[2]
RO = Variant("overlay-ro", "overlay", writable=False, needs_overlay=True)
RW = Variant("overlay-rw", "overlay", writable=True, needs_overlay=True)
MANY = 70


@pytest.fixture(scope="module", autouse=True)
def _overlay(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not overlay_usable(tmp_path_factory.mktemp("probe")):
        pytest.skip("overlayfs is not usable here")


def _many_layers() -> list[list[Entry]]:
    """Layer i adds d<i>/f and common/f<i> (common's header is in layer 0 only)
    and whites out the file of layer i-1 every third layer."""
    layers: list[list[Entry]] = []
    for i in range(MANY):
        mtime = BASE_MTIME_NS + i * 1_000_000_007
        layer = [
            Entry(f"d{i}", "dir", mode=0o755, mtime_ns=mtime),
            Entry(f"d{i}/f", data=f"layer {i}\n".encode(), mtime_ns=mtime),
            Entry(f"common/f{i}", data=b"x" * i, mtime_ns=mtime),
        ]
        if i == 0:
            layer.insert(0, Entry("common", "dir", mode=0o711, uid=3, mtime_ns=mtime))
        elif i % 3 == 0:
            layer.append(whiteout(f"d{i - 1}/f", mtime))
        layers.append(layer)
    return layers


@pytest.fixture(scope="module")
def many_layers(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image directory holding many:latest.tar, and umoci's unpack of it."""
    work = tmp_path_factory.mktemp("many")
    layout = images.build_oci_image(work, _many_layers())
    directory = work / "images"
    images.to_docker_archive(layout, "latest", directory / "many:latest.tar", "many")
    return directory, images.umoci_unpack(layout, "latest", work / "bundle")


@pytest.mark.parametrize("variant", [RO, RW], ids=lambda v: v.id)
async def test_many_layers_under_a_long_path(
    variant: Variant, many_layers: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, reference = many_layers
    work = tmp_path / ("x" * 100) / ("y" * 100)
    prov = make_provisioner(work, directory)
    async with provisioned(prov, variant, "many") as info:
        assert len(info.image.layers) == MANY
        store_layers = sorted((work / "store" / "layers").glob("*/overlay-v2"))
        assert len(store_layers) == MANY
        # Spelt out, the layers would not fit in one mount(2) call.
        assert len(":".join(map(str, store_layers))) > MAX_OPTIONS
        assert_same_tree(reference, info.rootfs)


@pytest.fixture(scope="module")
def busybox_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("busybox")
    subprocess.run(
        [REPO / "scripts" / "sample-image", directory, "busybox:latest"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return directory


def _run_in(
    info: ProvisionInfo,
    work: Path,
    script: str,
    *,
    readonly: bool,
    told: Callable[[int], None] | None = None,
) -> int:
    config = runtime.bundle_config(
        info.rootfs,
        info.config,
        ["/bin/sh", "-c", script],
        readonly=readonly,
        # Relative: the container's cgroup goes under the test's own.
        cgroups_path=f"lazyfs-test/{info.container_id}",
    )
    bundle = work / "bundle"
    runtime.write_bundle(bundle, config)
    return runtime.run_bundle(bundle, f"lazyfs-test-{os.getpid()}", work / "runc", told=told)


@pytest.mark.parametrize("variant", [RO, RW], ids=lambda v: v.id)
def test_runc_runs_in_an_overlay_rootfs(
    variant: Variant, busybox_dir: Path, tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", busybox_dir)
    # Synchronous: run_bundle forwards signals, which only the main thread may catch.
    info = trio.run(
        lambda: prov.provision("c1", docker("busybox"), "overlay", writable=variant.writable)
    )
    try:
        if variant.writable:
            script = "cat /etc/motd > /root/motd && rm /etc/passwd && exit 7"
            assert _run_in(info, tmp_path, script, readonly=False) == 7
            assert (info.rootfs / "root" / "motd").read_text() == "hello from a lazyfs rootfs\n"
            assert not (info.rootfs / "etc" / "passwd").exists()
            assert (scratch_dir(info.rootfs) / "upper" / "root" / "motd").is_file()
        else:
            # runc told the root is writable leaves it as mounted: only the
            # overlay's own read-only mount can refuse the write.
            script = "grep -q lazyfs /etc/motd && ! touch /etc/x 2>/dev/null"
            assert _run_in(info, tmp_path, script, readonly=False) == 0
    finally:
        trio.run(prov.destroy, "c1")
    assert mounts_under(tmp_path) == []
    assert not scratch_dir(info.rootfs).exists()


def test_a_signal_run_passes_on_to_the_container_is_told(busybox_dir: Path, tmp_path: Path) -> None:
    # ``lazyfs run`` learns so that its container was stopped, not ended by itself.
    prov = make_provisioner(tmp_path / "work", busybox_dir)
    info = trio.run(lambda: prov.provision("c1", docker("busybox"), "overlay", writable=True))
    told: list[int] = []
    sent: list[bool] = []

    def stop_when_ready() -> None:
        deadline = time.monotonic() + 60
        while not (info.rootfs / "ready").exists():  # polls for a file, no timing assumed
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_ready)
    stopper.start()
    again: list[int] = []
    try:
        # Ends by itself after a minute, should the signal never come.
        script = ("trap 'exit 3' TERM; touch /ready; i=0; "
                  "while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done; exit 9")  # fmt: skip
        code = _run_in(info, tmp_path, script, readonly=False, told=told.append)
        stopper.join()
        # A container that ends by itself tells nothing.
        (tmp_path / "again").mkdir()
        assert _run_in(info, tmp_path / "again", "true", readonly=False, told=again.append) == 0
    finally:
        stopper.join()
        trio.run(prov.destroy, "c1")
    assert sent, "the container never started"
    assert (code, told) == (3, [signal.SIGTERM])
    assert again == []


async def test_destroy_removes_mount_upper_and_work(
    many_layers: tuple[Path, Path], tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", many_layers[0])
    async with provisioned(prov, RW, "many") as info:
        scratch = scratch_dir(info.rootfs)
        assert (scratch / "upper").is_dir() and (scratch / "work").is_dir()
        assert mounts_under(tmp_path) == [info.rootfs]
    assert mounts_under(tmp_path) == []
    assert not scratch.exists() and not info.rootfs.exists()
    # The backend alone, twice: destroy is idempotent.
    backend = prov.backend("overlay")
    assert isinstance(backend, OverlayBackend)
    backend.destroy(info.rootfs)


async def test_containers_share_layers_and_stay_apart(
    many_layers: tuple[Path, Path], tmp_path: Path
) -> None:
    directory, reference = many_layers
    prov = make_provisioner(tmp_path / "work", directory)
    async with provisioned(prov, RW, "many", "c1") as one:
        async with provisioned(prov, RW, "many", "c2") as two:
            links = [scratch_dir(info.rootfs) / "l" for info in (one, two)]
            assert sorted(os.readlink(p) for p in links[0].iterdir()) == sorted(
                os.readlink(p) for p in links[1].iterdir()
            )
            (one.rootfs / "d1" / "f").write_text("changed in c1\n")
            (one.rootfs / "mine").write_text("c1\n")
        # c2 is gone; c1 is still mounted and still sees its own writes only.
        assert mounts_under(tmp_path) == [one.rootfs]
        assert (one.rootfs / "mine").read_text() == "c1\n"
        assert (one.rootfs / "d1" / "f").read_text() == "changed in c1\n"
    async with provisioned(prov, RO, "many", "c3") as three:
        assert_same_tree(reference, three.rootfs)
    assert len(list((tmp_path / "work" / "store" / "layers").glob("*/overlay-v2"))) == MANY


async def test_recover_takes_down_overlay_rootfses(
    many_layers: tuple[Path, Path], tmp_path: Path
) -> None:
    prov = make_provisioner(tmp_path / "work", many_layers[0])
    info = await prov.provision("c1", docker("many"), "overlay", writable=True)
    try:
        report = await prov.recover(keep=[])
    finally:
        await prov.destroy("c1")
    assert report.destroyed == ("c1",)
    assert mounts_under(tmp_path) == []
    assert not scratch_dir(info.rootfs).exists()


def test_default_backend_is_overlay_where_it_works(tmp_path: Path) -> None:
    store_tmp = tmp_path / "store" / "tmp"
    store_tmp.mkdir(parents=True)
    assert default_backend_name(store_tmp) == "overlay"
    assert list(store_tmp.iterdir()) == []  # the probe cleaned up
    assert Provisioner(tmp_path / "work", _store(tmp_path), {}).default_backend == "overlay"


def test_probe_says_no_where_overlay_cannot_live(tmp_path: Path) -> None:
    # A read-only directory cannot hold the trial (nor layers, nor uppers).
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", ro], check=True)
    try:
        assert not overlay_usable(ro)
        assert default_backend_name(ro) == "copy"
    finally:
        subprocess.run(["umount", ro], check=True)


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")
