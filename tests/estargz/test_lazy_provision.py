"""``lazyfs provision --backend fuse`` of a registry eStargz image: mounted before it is pulled.

The image's layers all carry the ``toc.digest`` annotation, so the provider
pulls none of them: the provisioner records them as remote, the mount
process reads them through the cache daemon, which the first mount starts,
and the rootfs serves the image's files.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from tests.support.cache_daemons import daemon_status, kill_recorded, recorded_daemon, wait_for
from tests.support.estargz_images import BIG_DATA
from tests.support.flocks import held
from tests.support.fuse_mounts import need_fuse
from tests.support.registry_servers import Registry


def _lazyfs(work: Path, registry: Registry, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(work), "--docker_registry",
            registry.url, "--cache_dir", str(work / "cache"), *args]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
    )


def test_provision_fuse_mounts_the_estargz_layers_from_the_registry(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    work = tmp_path / "work"
    image = f"docker:{estargz_registry.host}/rich:esgz"
    try:
        done = _lazyfs(work, estargz_registry, "provision", "c1", image, "--backend", "fuse")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["backend"] == "fuse"
        assert len(info["remote_layers"]) == len(info["image"]["layers"]) == 3
        rootfs = Path(info["rootfs"])
        assert (rootfs / "usr/bin/prog").read_bytes() == b"prog\n" * 1000
        assert (rootfs / "etc/hostname").read_bytes() == b"rich-top\n"
        # Started by the mount that needed it; it fetched the layers' bytes.
        assert recorded_daemon(work / "cache") is not None
        found = daemon_status(work / "cache")
        assert found is not None and found.fetches > 0
    finally:
        gone = _lazyfs(work, estargz_registry, "destroy", "c1")
        kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr


def test_a_file_read_from_a_remote_layer_fetches_its_chunks_not_the_layer(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    # The big image's first layer holds 9 MiB of incompressible data; reading
    # only the small file of its second layer must leave most of it remote.
    need_fuse()
    work = tmp_path / "work"
    image = f"docker:{estargz_registry.host}/big:esgz"
    try:
        # Counting bytes: without the background fetch of the rest of the layers.
        done = _lazyfs(work, estargz_registry, "--no_background_fetch", "provision", "c1",
                       image, "--backend", "fuse")  # fmt: skip
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        rootfs = Path(info["rootfs"])
        assert (rootfs / "opt/small").read_bytes() == b"small\n" * 100
        assert (rootfs / "opt/big").stat().st_size == len(BIG_DATA)
        found = daemon_status(work / "cache")
        assert found is not None
        # Tails for the tables of contents and the small file's chunk: a
        # fraction of the image, never its big (incompressible) layer whole.
        assert found.used_bytes < len(BIG_DATA) / 2, found.used_bytes
        # Once read, the big file's bytes are the image's, chunk by chunk.
        assert (rootfs / "opt/big").read_bytes() == BIG_DATA
    finally:
        gone = _lazyfs(work, estargz_registry, "destroy", "c1")
        kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr


def test_mount_shows_a_registry_estargz_image_before_it_is_pulled(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    # `lazyfs mount` is the fuse backend's: the daemon it starts while the
    # image resolves serves the layers, none of which is pulled whole.
    need_fuse()
    work = tmp_path / "work"
    point = tmp_path / "look"
    point.mkdir()
    image = f"docker:{estargz_registry.host}/rich:esgz"
    try:
        done = _lazyfs(work, estargz_registry, "--no_background_fetch", "mount", image, str(point))
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["mountpoint"] == str(point)
        assert (point / "usr/bin/prog").read_bytes() == b"prog\n" * 1000
        found = daemon_status(work / "cache")
        assert found is not None and found.fetches > 0
        blobs = work / "store/docker/blobs/sha256"
        assert blobs.parent.is_dir()  # where a pulled layer would be
        pulled = [d for d in shown["image"]["layers"] if (blobs / d.split(":")[1]).exists()]
        assert not pulled, "layers pulled whole"
    finally:
        gone = _lazyfs(work, estargz_registry, "umount", str(point))
        kill_recorded(work / "cache")
    assert gone.returncode == 0, gone.stderr


def test_mount_starts_the_daemon_while_the_image_resolves(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    # The tag is missing: only a start ahead of the manifest, not the mount
    # (which never comes), can have started the daemon.
    point = tmp_path / "look"
    point.mkdir()
    work = tmp_path / "work"
    image = f"docker:{estargz_registry.host}/rich:no-such-tag"
    try:
        done = _lazyfs(work, estargz_registry, "mount", image, str(point))
        assert done.returncode != 0
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        # The command returned once the daemon held its cache (Starting.hand_over) ...
        assert _cache_owned(work / "cache")
    finally:
        # ... whose pid it writes once it has taken stock of it (lazyfs.cache.service.run).
        with contextlib.suppress(AssertionError):
            wait_for(lambda: recorded_daemon(work / "cache") is not None, "its record", 10.0)
        kill_recorded(work / "cache")


def _cache_owned(cache_dir: Path) -> bool:
    """Whether a process holds the cache's lock, as lazyfs.cache.chunks.DiskCache takes it."""
    return held(cache_dir / "lock")


def test_a_refused_mount_point_starts_no_daemon(estargz_registry: Registry, tmp_path: Path) -> None:
    point = tmp_path / "look"
    point.mkdir()
    (point / "something").write_text("here\n")
    work = tmp_path / "work"
    image = f"docker:{estargz_registry.host}/rich:esgz"
    try:
        done = _lazyfs(work, estargz_registry, "mount", image, str(point))
        assert done.returncode != 0
        assert done.stderr.strip().splitlines() == [f"lazyfs: mount point {point} is not empty"]
        assert recorded_daemon(work / "cache") is None
        assert not (work / "cache").exists()
    finally:
        kill_recorded(work / "cache")
