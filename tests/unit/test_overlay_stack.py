"""overlayfs stacks at most 500 lower directories: deeper images are refused in one line
before any layer is extracted, naming the backends that take them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from backends.overlay import MAX_LOWERS, OverlayBackend
from providers.digest import Digest
from providers.errors import BackendError
from providers.manifest import Layer

LAYER = Layer(Digest("sha256:" + "1" * 64), "application/vnd.oci.image.layer.v1.tar", 10)


@pytest.mark.parametrize(("count", "writable"), [(MAX_LOWERS, False), (MAX_LOWERS + 1, True)])
def test_an_image_deeper_than_overlayfs_stacks_is_refused_before_extraction(
    tmp_path: Path, count: int, writable: bool
) -> None:
    # Before: every layer extracted, then mount(8)'s "wrong fs type, bad option ...",
    # the kernel's "too many lower directories" only in dmesg.
    assert os.geteuid() == 0, "the overlay backend refuses users first: run as root"
    (tmp_path / "tmp").mkdir()
    backend = OverlayBackend(tmp_path / "layers", tmp_path / "tmp")
    blobs = cast(Any, None)  # never asked: refused before
    with pytest.raises(BackendError) as refused:
        backend.provision([LAYER] * count, blobs, tmp_path / "rootfs", writable=writable)
    assert str(refused.value) == (
        f"the overlay backend stacks at most {MAX_LOWERS} directories (the kernel's limit);"
        f" this rootfs needs {MAX_LOWERS + 1}: use --backend copy or fuse"
    )
    assert not (tmp_path / "layers").exists() and not (tmp_path / "rootfs").exists()
