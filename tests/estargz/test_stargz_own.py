"""eStargz's own entries (``stargz.index.json``, the landmarks) in a rootfs.

Read lazily, through its TOC, a layer shows the files of the image it was
converted from and nothing of eStargz's, as stargz-snapshotter shows it.
Pulled whole, a layer is an ordinary gzip layer and is unpacked as its tar
says, own entries included, as docker, containerd's overlayfs snapshotter
and ``umoci unpack`` do: every backend then gives the same tree, the fuse
backend's merged tree too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lazyfs.index.estargz import NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME
from tests.support.cache_daemons import kill_recorded
from tests.support.fuse_mounts import need_fuse
from tests.support.registry_servers import Registry

OWN = {TOC_NAME, PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK}
# The top level of the rich image (tests.support.images.RICH_LAYERS).
RICH_TOP = {"bin", "data", "dev", "etc", "home", "opaque", "srv", "tmp", "usr"}


class Work:
    def __init__(self, root: Path, registry: Registry) -> None:
        self.root, self.registry = root, registry

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lazyfs", "--work_dir", str(self.root),
                "--docker_registry", self.registry.url, "--cache_dir", str(self.root / "cache"),
                *args]  # fmt: skip
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False
        )

    @contextmanager
    def rootfs(self, name: str, backend: str) -> Iterator[dict[str, object]]:
        """``provision`` of the rich eStargz image; destroyed on the way out."""
        image = f"docker:{self.registry.host}/rich:esgz"
        try:
            done = self("provision", name, image, "--backend", backend)
            assert done.returncode == 0, done.stderr
            yield json.loads(done.stdout)
        finally:
            gone = self("destroy", name)
            assert gone.returncode == 0, gone.stderr


def test_a_lazy_rootfs_hides_estargz_own_entries(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    work = Work(tmp_path / "work", estargz_registry)
    try:
        with work.rootfs("c1", "fuse") as info:
            assert len(info["remote_layers"]) == 3  # type: ignore[arg-type]
            rootfs = Path(str(info["rootfs"]))
            assert set(os.listdir(rootfs)) == RICH_TOP
            for name in OWN:
                assert not (rootfs / name).exists()
    finally:
        kill_recorded(work.root / "cache")


def test_a_layer_pulled_whole_shows_them_as_its_tar_says_in_every_backend(
    estargz_registry: Registry, tmp_path: Path
) -> None:
    need_fuse()
    work = Work(tmp_path / "work", estargz_registry)
    # Every layer of the image has a landmark: ctr-remote adds one where it
    # does not prefetch.  The overlay backend pulls the layers whole.
    with work.rootfs("c1", "overlay") as info:
        overlay = set(os.listdir(Path(str(info["rootfs"]))))
    assert overlay == RICH_TOP | {TOC_NAME, NO_PREFETCH_LANDMARK}
    # Now in the store, the layers are local to the fuse backend, and read from their tars.
    try:
        with work.rootfs("c2", "fuse") as info:
            assert info["remote_layers"] == []
            rootfs = Path(str(info["rootfs"]))
            assert set(os.listdir(rootfs)) == overlay
            assert (rootfs / TOC_NAME).read_bytes().startswith(b"{")
    finally:
        kill_recorded(work.root / "cache")
