"""A copy rootfs whose image keeps even its owner out of its root directory (``./`` of
mode 0311) is provisioned by a user other than root as by root: what writes the tree
back to disk opens its parent, not the tree the image made."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.support import hand_images
from tests.support.lazyfs_cli import REPO

pytestmark = pytest.mark.integration

USER = 65534


def _closed_root_layer() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("./")
        root.type, root.mode = tarfile.DIRTYPE, 0o311
        tar.addfile(root)
        data = b"hello\n"
        info = tarfile.TarInfo("./hello")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_a_user_provisions_a_copy_rootfs_whose_root_is_closed_to_its_owner() -> None:
    base = Path(tempfile.mkdtemp(prefix="lazyfs-closed-root-"))
    try:
        os.chmod(base, 0o755)
        images = base / "images"
        images.mkdir()
        hand_images.docker_archive(
            images / "closed:1.tar", [_closed_root_layer()], None, "closed:1"
        )
        os.chmod(images / "closed:1.tar", 0o644)
        work = base / "work"
        work.mkdir()
        os.chown(work, USER, USER)

        def lazyfs(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "lazyfs", "--docker_registry", str(images),
                 "--work_dir", str(work), *argv],
                capture_output=True, text=True, timeout=120, cwd=REPO, user=USER, group=USER,
                extra_groups=[], stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(work)},
            )  # fmt: skip

        made = lazyfs("provision", "c1", "closed:1", "--backend", "copy")
        assert made.returncode == 0, made.stderr
        gone = lazyfs("destroy", "c1")
        assert gone.returncode == 0, gone.stderr
    finally:
        shutil.rmtree(base)
