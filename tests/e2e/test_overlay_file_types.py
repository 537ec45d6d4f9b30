"""A work dir whose filesystem lists no file types gets copy, and overlay is refused there.

overlayfs tells whiteouts from files by the type (d_type) its directories'
listings give. An ext4 made without ``filetype`` (``tests.support.loopfs``)
gives none: an overlay mount there still works, but whiteouts are not
hidden and ``rm -r`` of an image's directory fails in the container, which
is why docker refuses overlay2 there. So the default backend there is copy,
and ``--backend overlay`` is refused in one line naming the directory,
before any layer is extracted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import overlay
from backends.mounts import mounts_under
from tests.support.lazyfs_cli import Lazyfs, one_line_error
from tests.support.loopfs import loop_filesystem

pytestmark = pytest.mark.integration


@pytest.fixture
def untyped(tmp_path: Path) -> Iterator[Path]:
    """An ext4 without d_type; unmounted and detached afterwards, also when the test failed."""
    with loop_filesystem(tmp_path / "disk", 64, features="^filetype") as disk:
        yield disk


@pytest.fixture
def lazyfs(untyped: Path, image_dir: Path) -> Iterator[Lazyfs]:
    on_disk = Lazyfs(untyped / "work", image_dir)
    try:
        yield on_disk
    finally:
        on_disk("recover", check=False)
        assert mounts_under(on_disk.work_dir) == []


def test_the_probe_sees_no_file_types(untyped: Path, tmp_path: Path) -> None:
    assert not overlay.overlay_usable(untyped)
    # Where listings carry types (the test's own tmp), it sees them: it can tell.
    assert overlay.file_types_listed(tmp_path)
    assert not overlay.file_types_listed(untyped)
    assert sorted(path.name for path in untyped.iterdir()) == ["lost+found"]  # no trial left


def test_the_default_backend_there_is_copy(lazyfs: Lazyfs) -> None:
    made = json.loads(lazyfs("provision", "c1", "busybox").stdout)
    assert made["backend"] == "copy"
    # What failed in an overlay rootfs there works in this one.
    shutil.rmtree(Path(made["rootfs"]) / "bin")
    lazyfs("destroy", "c1")


@pytest.mark.parametrize("writable", [False, True])
def test_overlay_is_refused_there_in_one_line(lazyfs: Lazyfs, writable: bool) -> None:
    argv = ["provision", "c1", "busybox", "--backend", "overlay"]
    line = one_line_error(lazyfs(*argv, *(["--writable"] if writable else []), check=False))
    tmp = lazyfs.work_dir / "store" / "docker" / "tmp"
    assert line == (
        f"lazyfs: the overlay backend cannot use {tmp}: its filesystem lists no file types"
        " (d_type), which overlayfs needs to hide whiteouts: use --backend copy"
    )
    # Before any layer was extracted, and with nothing left of the container or the probe.
    store = lazyfs.work_dir / "store" / "docker"
    assert list(store.glob("layers/*/overlay-v2")) == []
    assert list(tmp.iterdir()) == []
    assert list((lazyfs.work_dir / "provisioner" / "containers").iterdir()) == []
    assert mounts_under(lazyfs.work_dir) == []
