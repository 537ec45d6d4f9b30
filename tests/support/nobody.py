"""lazyfs run as user 65534 (nobody), on a work dir of its own: what a user who is not root gets.

``nobodys_dir`` makes a directory all may search, with the busybox image
beside a home of nobody's (``searchable_dir`` the directory alone);
``as_nobody`` runs ``lazyfs`` there as nobody, under ``prlimit --nproc`` if
asked (it counts threads too).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.lazyfs_cli import REPO

NOBODY = 65534


@contextmanager
def searchable_dir(prefix: str) -> Iterator[Path]:
    """A directory under /tmp all may search (pytest's own are root's alone), removed after.
    Made as root, for tests that work in it as user 65534."""
    assert os.geteuid() == 0, "this test works as user 65534: it needs root"
    made = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        os.chmod(made, 0o755)
        yield made
    finally:
        shutil.rmtree(made)


@contextmanager
def nobodys_dir(image_dir: Path, prefix: str) -> Iterator[Path]:
    """A directory of user 65534's in one all may search, with busybox beside it; removed after."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        (base / "images").mkdir(mode=0o755)
        shutil.copy(image_dir / "busybox:latest.tar", base / "images")
        os.chmod(base / "images" / "busybox:latest.tar", 0o644)
        (base / "home").mkdir()
        os.chown(base / "home", NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base)


def as_nobody(
    base: Path, *args: str, nproc: int | None = None, work_dir: bool = True
) -> subprocess.CompletedProcess[str]:
    """lazyfs as user 65534 on ``base`` (``nobodys_dir``), under ``prlimit --nproc`` if given;
    without ``work_dir``, on the default work dir, in ``base/home``."""
    limit = [] if nproc is None else ["prlimit", f"--nproc={nproc}", "--"]
    work = ["--work_dir", str(base / "home" / "work")] if work_dir else []
    return subprocess.run(
        [*limit, sys.executable, "-m", "lazyfs", *work, "--docker_registry",
         str(base / "images"), *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, user=NOBODY, group=NOBODY,
        extra_groups=[], stdin=subprocess.DEVNULL, env=_nobodys_env(base),
    )  # fmt: skip


def _nobodys_env(base: Path) -> dict[str, str]:
    """This environment with nobody's HOME, without root's XDG directories."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith("XDG_")}
    return {**kept, "HOME": str(base / "home")}
