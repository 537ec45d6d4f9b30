"""``lazyfs run`` refuses an image whose /etc/passwd is a FIFO, instead of hanging in runc.

runc's init opens /etc/passwd in the container whoever the user is ("0:0" too) and
blocked there for ever; ``lazyfs run`` passed SIGTERM on to a runc that takes none
before the container runs, so only ``lazyfs destroy --force`` ended it. Now the run
exits 125 with one line, as for other bad images, and the container is destroyed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import images
from tests.support.lazyfs_cli import Lazyfs

pytestmark = pytest.mark.integration

BOUND = 60  # seconds a refusal may take on a loaded machine; a hang is past it


def containers(work: Path) -> list[str]:
    found = work / "provisioner" / "containers"
    return sorted(os.listdir(found)) if found.is_dir() else []


@pytest.mark.parametrize("backend", ["copy", "overlay"])
def test_a_fifo_at_etc_passwd_is_refused_not_waited_on(
    lazyfs: Lazyfs, tmp_path: Path, backend: str
) -> None:
    assert os.geteuid() == 0, "lazyfs run needs root"
    busybox = shutil.which("busybox")
    assert busybox is not None, "needs busybox (busybox-static)"
    # A command that is there: runc is what would have run it, and hung first.
    layer = [
        images.Entry("bin", "dir", mode=0o755),
        images.Entry("bin/busybox", data=Path(busybox).read_bytes(), mode=0o755),
        images.Entry("etc", "dir", mode=0o755),
        images.Entry("etc/passwd", "fifo"),
    ]
    config = images.ImageConfig(cmd=("/bin/busybox", "true"), user="0:0")
    image = f"oci:{images.build_oci_image(tmp_path / 'image', [layer], 'v1', config)}:v1"
    run = subprocess.Popen(
        lazyfs.argv("run", "--backend", backend, image),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = run.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        # runc's init waits on the FIFO, deaf to signals: only a forced destroy ends it,
        # and the run with it.
        for cid in containers(lazyfs.work_dir):
            lazyfs("destroy", "--force", cid, check=False)
        run.communicate(timeout=BOUND)
        raise AssertionError(f"lazyfs run still ran after {BOUND} s") from None
    assert run.returncode == 125, err
    assert err == "lazyfs: the image's /etc/passwd is a FIFO: runc would wait on it for ever\n"
    assert out == ""
    assert containers(lazyfs.work_dir) == []
