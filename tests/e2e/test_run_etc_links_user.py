"""``lazyfs run -u NAME`` finds NAME where runc does: through an /etc/passwd that is a symlink.

runc follows symlinks to the tables from the container's root; ``lazyfs`` looked them up
through none, and refused the user as "not in the image's /etc/passwd".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

BUSYBOX = Path("/bin/busybox")


def containers(work: Path) -> list[str]:
    found = work / "provisioner" / "containers"
    return sorted(os.listdir(found)) if found.is_dir() else []


def test_a_named_user_behind_symlinked_tables_runs(lazyfs: Lazyfs, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "lazyfs run needs root"
    layer = [images.Entry(path, "dir", mode=0o755) for path in ("bin", "proc", "sys", "dev")]
    layer += [
        images.Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
        images.Entry("usr", "dir", mode=0o755),
        images.Entry("usr/share", "dir", mode=0o755),
        images.Entry("usr/share/base", "dir", mode=0o755),
        images.Entry("usr/share/base/passwd", data=b"app:x:1000:1001::/srv:/bin/sh\n"),
        images.Entry("usr/share/base/group", data=b"staff:x:50:app\n"),
        images.Entry("etc", "dir", mode=0o755),
        images.Entry("etc/passwd", "symlink", target="../usr/share/base/passwd"),
        images.Entry("etc/group", "symlink", target="/usr/share/base/group"),
    ]
    image = f"oci:{images.build_oci_image(tmp_path / 'image', [layer], 'v1')}:v1"
    script = 'id -u; id -g; id -G; echo "$HOME"'
    try:
        result = lazyfs("run", "-u", "app", image, "--", "/bin/busybox", "sh", "-c", script)
    finally:
        for cid in containers(lazyfs.work_dir):
            lazyfs("destroy", "--force", cid, check=False)
    assert result.stdout == "1000\n1001\n1001 50\n/srv\n", result.stderr
