"""``run`` refuses a work dir whose path is not UTF-8 before it makes anything:
runc's config.json, which names the rootfs under it, is JSON and cannot carry it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.lazyfs_cli import Lazyfs, one_line_error


def test_run_refuses_a_work_dir_that_is_not_utf8(lazyfs: Lazyfs, tmp_path: Path) -> None:
    work = os.fsdecode(os.fsencode(tmp_path) + b"/work-\xff")  # a surrogate escape, as argv
    argv = Lazyfs(Path(work), lazyfs.image_dir).argv(
        "run", "--backend", "copy", "busybox:latest", "--", "true"
    )
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
    )
    error = one_line_error(result)
    shown = f"{tmp_path}/work-\\xff"
    assert error.startswith(f"lazyfs: --work_dir {shown}: not UTF-8; run needs a work dir"), error
    # Refused first: nothing was made.
    assert not os.path.lexists(work)
