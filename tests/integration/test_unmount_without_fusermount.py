"""Taking a mount down where fusermount3 is not on PATH.

Root mounts FUSE without fusermount3 (libfuse mounts directly), so root must
unmount without it too: by umount2(2), lazily only when the mount is busy.
Anyone else needs fusermount3 and is told so in one line. Each test takes its
mounts down afterwards, also when it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.mounts import mount, unmount
from lazyfs.fs import mount as lazy_mount
from lazyfs.fs.unmount import fusermount_unmount
from lazyfs.store.disk import Store
from tests.support.blob_sources import store_files
from tests.support.fuse_mounts import alive, unmount_all
from tests.support.images import Entry, write_layer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def need_root_and_fuse() -> None:
    # Fails rather than skips: what is tested is root's way down, on a real mount.
    assert os.geteuid() == 0, "needs root"
    assert os.access("/dev/fuse", os.R_OK | os.W_OK), "needs /dev/fuse"


@pytest.fixture
def without_fusermount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """PATH, for the test's body only, names one empty directory: no fusermount3."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(empty))
        yield


@pytest.fixture
def fuse_mounted(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A lazyfs mount of a one-file layer, made with the ordinary PATH; taken down after."""
    need_root_and_fuse()
    store = Store(tmp_path / "store")
    layer = write_layer([Entry("hello", data=b"hi\n")], tmp_path / "layer.tar")
    layers = store_files(store, [layer])
    point = tmp_path / "m"
    point.mkdir()
    made: list[tuple[Path, int]] = []
    try:
        pid = lazy_mount.mount(layers, point, store=store.root, log_path=tmp_path / "mount.log")
        made.append((point, pid))
        yield point, pid
    finally:
        unmount_all(made)  # with PATH as it was: the fixture outlives without_fusermount


def test_root_unmounts_a_fuse_mount_without_fusermount3(
    fuse_mounted: tuple[Path, int], without_fusermount: None
) -> None:
    point, pid = fuse_mounted
    assert (point / "hello").read_bytes() == b"hi\n"
    lazy_mount.unmount(point, pid=pid)
    assert not lazy_mount.is_mounted(point)
    assert not alive(pid)


def test_root_detaches_a_busy_fuse_mount_without_fusermount3(
    fuse_mounted: tuple[Path, int], without_fusermount: None
) -> None:
    # An open file keeps the mount busy: as ``fusermount3 -u -z``, it is detached.
    point, pid = fuse_mounted
    with open(point / "hello", "rb") as busy:
        fusermount_unmount(point)
        assert not lazy_mount.is_mounted(point)
        assert busy.read() == b"hi\n"  # what was open reads on
    lazy_mount.unmount(point, pid=pid)  # the detached mount went with the last file
    assert not alive(pid)


def test_anyone_else_is_told_fusermount3_is_missing(tmp_path: Path) -> None:
    # A mount of root's: the user must be refused before anything is tried on it. The
    # user's PATH is an empty directory the user may search (tmp_path is root's alone).
    need_root_and_fuse()
    point = tmp_path / "m"
    point.mkdir()
    mount("tmpfs", point, "tmpfs", 0)
    try:
        code = (
            "import sys; from pathlib import Path\n"
            "from lazyfs.fs.unmount import fusermount_unmount\n"
            "from providers.errors import BackendError\n"
            "try:\n"
            "    fusermount_unmount(Path(sys.argv[1]))\n"
            "except BackendError as error:\n"
            "    sys.exit(str(error))\n"
        )
        with tempfile.TemporaryDirectory() as empty:
            os.chmod(empty, 0o755)
            done = subprocess.run(
                [sys.executable, "-c", code, str(point)],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                env={"PATH": empty, "PYTHONPATH": str(ROOT)},
                cwd="/",
                capture_output=True,
                text=True,
                check=False,
            )
        assert done.returncode == 1, done.stderr
        said = done.stderr.strip()
        assert "\n" not in said
        assert said == (
            f"cannot unmount {point}: fusermount3 is not installed "
            "(package fuse3; scripts/setup installs it)"
        )
        assert lazy_mount.is_mounted(point)
    finally:
        unmount(point)
