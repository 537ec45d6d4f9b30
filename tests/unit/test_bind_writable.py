"""The bind backend refuses a writable rootfs with a line saying what works instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.bind import BindBackend
from providers.errors import BackendError
from tests.support.blob_sources import LocalFiles


def test_a_writable_rootfs_is_refused_naming_what_works(tmp_path: Path) -> None:
    backend = BindBackend(tmp_path / "layers", tmp_path / "tmp")
    rootfs = tmp_path / "rootfs"
    with pytest.raises(BackendError) as refused:
        backend.provision([], LocalFiles([]), rootfs, writable=True)
    line = str(refused.value)
    assert "\n" not in line
    # run is writable unless --read-only; provision read-only unless --writable.
    for works in ("run --read-only", "provision without --writable", "volumes without :rw"):
        assert works in line
    assert "copy, overlay or fuse" in line
    assert not rootfs.exists()  # refused before anything was made
