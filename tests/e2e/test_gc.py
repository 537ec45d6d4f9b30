"""Image GC on a small loop-mounted disk: the headroom is reached, oldest use first,
containers keep their whole trees, and a GC killed at any step damages nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lazyfs.cache.layout import ChunkKey, Layout
from providers.digest import Digest
from tests.support import images
from tests.support.lazyfs_cli import REPO, Lazyfs
from tests.support.loopfs import loop_filesystem
from tests.support.tree import Node, diff_trees, tree_digest

pytestmark = pytest.mark.integration

PAYLOAD = 3 << 20  # random, so gzip keeps it whole: each image takes about this much
NAMES = [f"img{i}" for i in range(6)]

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def gc_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """img0..img5 as docker save tarballs: a small layer of many files, a big random one."""
    directory = tmp_path_factory.mktemp("gc-images")
    work = tmp_path_factory.mktemp("gc-build")
    for i, name in enumerate(NAMES):
        files = [images.Entry("etc", "dir", mode=0o755)]
        files += [images.Entry(f"etc/{name}-{n}", data=f"{name} {n}\n".encode()) for n in range(40)]
        payload = [
            images.Entry("data", "dir", mode=0o755),
            images.Entry(f"data/{name}.bin", data=os.urandom(PAYLOAD + i)),
        ]
        layout = images.build_oci_image(work / name, [files, payload], "latest")
        images.to_docker_archive(layout, "latest", directory / f"{name}:latest.tar", name)
    return directory


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with loop_filesystem(tmp_path / "disk", 64) as mountpoint:
        yield mountpoint


@pytest.fixture
def on_disk(tmp_path: Path, disk: Path, gc_images: Path) -> Iterator[tuple[Path, Cli]]:
    """A store on the small disk and ``lazyfs`` using it; its containers recovered away after."""
    store = disk / "store"
    lazyfs = cli_on(tmp_path / "work", gc_images, store)
    yield store, lazyfs
    lazyfs("recover", check=False)


def cli_on(work: Path, image_dir: Path, store: Path) -> Cli:
    lazyfs = Lazyfs(work, image_dir)

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return lazyfs("--docker_store_dir", str(store), *args, check=check)

    return run


def records(store: Path) -> dict[str, Path]:
    """Each stored image's record, by short name (img0)."""
    found = {}
    for path in (store / "images").glob("*.json"):
        reference = json.loads(path.read_text())["reference"]
        found[reference.rsplit("/", 1)[-1].split(":")[0]] = path
    return found


def rootfs_tree(info: dict[str, object]) -> dict[str, Node]:
    return tree_digest(Path(str(info["rootfs"])), dir_mtimes=False)


def test_gc_reaches_the_headroom_oldest_first_and_containers_keep_their_trees(
    on_disk: tuple[Path, Cli],
) -> None:
    store, lazyfs = on_disk
    for name in NAMES:
        lazyfs("pull", name)
    used = {
        "c0": json.loads(lazyfs("provision", "c0", "img0", "--backend", "overlay").stdout),
        "c1": json.loads(lazyfs("provision", "c1", "img1", "--backend", "fuse").stdout),
    }
    before = {cid: rootfs_tree(info) for cid, info in used.items()}
    # Last used: img2 longest ago, then img3, img4; img5 is excluded, img0 and img1 in use.
    for age, name in enumerate(["img2", "img3", "img4", "img5", "img0", "img1"]):
        os.utime(records(store)[name], (1_000_000 + age, 1_000_000 + age))
    stats = os.statvfs(store)
    free, total = stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize
    # Room for one image and a half more: two must go, and the third may stay.
    headroom = (free + 1.5 * PAYLOAD) / total
    config = {"image_disk_headroom": headroom, "excluded_images": ["img5"]}

    result = lazyfs("--image_gc_config", json.dumps(config), "gc")

    report = json.loads(result.stdout)
    assert report["reached"] is True
    assert [name.split(" ")[0] for name in report["removed_images"]] == [
        "docker.io/library/img2:latest",
        "docker.io/library/img3:latest",
    ]
    stats = os.statvfs(store)
    assert stats.f_bavail * stats.f_frsize >= headroom * total
    assert sorted(records(store)) == ["img0", "img1", "img4", "img5"]
    for cid, info in used.items():
        assert diff_trees(before[cid], rootfs_tree(info)) == [], cid
    assert list((store / "gc").iterdir()) == []
    # What went is pulled again when wanted; what stayed is whole.
    for cid, name in (("c2", "img2"), ("c4", "img4")):
        info = json.loads(lazyfs("provision", cid, name, "--backend", "overlay").stdout)
        assert (Path(info["rootfs"]) / "data" / f"{name}.bin").stat().st_size > PAYLOAD - 1


def test_gc_that_cannot_reach_the_headroom_says_so(on_disk: tuple[Path, Cli]) -> None:
    store, lazyfs = on_disk
    lazyfs("provision", "c0", "img0", "--backend", "copy")
    result = lazyfs("--image_gc_config", '{"image_disk_headroom": 1}', "gc", check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout)["removed_images"] == []
    (line,) = result.stderr.splitlines()
    assert line.startswith("lazyfs: the store's filesystem has ")
    assert line.endswith("less than the headroom 100%: the rest is in use or excluded")
    assert sorted(records(store)) == ["img0"]


# Runs ``lazyfs`` and kills itself with SIGKILL just before its Nth change to a
# directory (unlink, rmdir, rename), whatever GC is doing then: moving,
# deleting a tree half way, writing.  N = 0: runs to the end, and says on
# stderr how many changes it made.
KILLER = """
import os, signal, sys
limit, count = int(sys.argv[1]), 0
def counted(real):
    def call(*args, **kwargs):
        global count
        count += 1
        if count == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
for name in ("unlink", "rmdir", "rename", "replace"):
    setattr(os, name, counted(getattr(os, name)))
from lazyfs.cli import main
status = main(sys.argv[2:])
print(f"changes={count}", file=sys.stderr)
sys.exit(status)
"""
KILL_POINTS = 6


def test_a_gc_killed_at_any_step_leaves_no_layer_a_provision_trusts_damaged(
    tmp_path: Path, gc_images: Path
) -> None:
    work, store = tmp_path / "work", tmp_path / "store"
    lazyfs = cli_on(work, gc_images, store)
    expected: dict[str, dict[str, Node]] = {}

    def provision_each() -> None:
        # Pulls what is gone and leaves everything a layer has: a blob,
        # extracted trees (overlay), an index and a kept merged tree (fuse);
        # each rootfs must be the tree the image had before any GC.
        for backend in ("overlay", "fuse"):
            info = json.loads(lazyfs("provision", "c", "img0", "--backend", backend).stdout)
            try:
                tree = rootfs_tree(info)
            finally:
                lazyfs("destroy", "c")
            assert diff_trees(expected.setdefault(backend, tree), tree) == [], backend

    def prune(limit: int) -> subprocess.CompletedProcess[str]:
        argv = Lazyfs(work, gc_images).argv("--docker_store_dir", str(store), "images", "prune")
        return subprocess.run(
            [sys.executable, "-c", KILLER, str(limit), *argv[3:]],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )

    try:
        provision_each()
        whole = prune(0)
        assert whole.returncode == 0, whole.stderr
        changes = int(whole.stderr.rsplit("changes=", 1)[1])
        assert changes > 2 * KILL_POINTS  # the image, its layers, their trees
        provision_each()
        kills = 0
        for n in range(KILL_POINTS):
            limit = 1 + n * (changes - 1) // (KILL_POINTS - 1)  # the first change to the last
            killed = prune(limit)
            # The last points may lie past a pass that had less to do than the first.
            assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr
            kills += killed.returncode != 0
            # What it left is whole or gone: provisions (pulling again) get the same trees.
            provision_each()
        assert kills >= KILL_POINTS - 2
        # The next pass finishes what the killed ones left in gc/.
        lazyfs("gc")
        assert list((store / "gc").iterdir()) == []
    finally:
        lazyfs("recover", check=False)


def test_the_cache_daemon_runs_gc_every_watch_interval(tmp_path: Path, gc_images: Path) -> None:
    lazyfs = Lazyfs(tmp_path / "work", gc_images)
    store = tmp_path / "work" / "store" / "docker"
    lazyfs("provision", "c0", "img0", "--backend", "copy")
    lazyfs("pull", "img1")
    assert sorted(records(store)) == ["img0", "img1"]
    # A chunk of each layer in the daemon's cache, as lazy mounts of them would leave.
    chunks = Layout(tmp_path / "work" / "cache")
    cached = {}
    for name, record in records(store).items():
        for layer in json.loads(record.read_text())["layers"]:
            path = chunks.chunk_path(ChunkKey(Digest(layer["digest"]), 0))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"cached")
            cached[path] = name
    # A headroom of 100% is never reached: every pass removes all that nothing uses.
    config = '{"image_disk_headroom": 1, "image_disk_watch_interval": {"nanoseconds": 100000000}}'
    daemon = lazyfs.popen("--image_gc_config", config, "daemon")
    try:
        deadline = time.monotonic() + 60  # bounds a failure only
        while "img1" in records(store) and daemon.poll() is None:
            assert time.monotonic() < deadline, "the daemon ran no GC pass"
            time.sleep(0.05)
        assert daemon.poll() is None, daemon.communicate()[1]
        assert sorted(records(store)) == ["img0"]  # c0 uses it
        # The pass's removed layers' chunks go with them; those of the image kept stay.
        while any(path.exists() for path, name in cached.items() if name == "img1"):
            assert time.monotonic() < deadline, "the daemon kept the removed layers' chunks"
            time.sleep(0.05)
        assert all(path.exists() for path, name in cached.items() if name == "img0")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
        lazyfs("recover", check=False)
    assert daemon.returncode == 0, err
    assert "image GC: removed 1 images" in err
