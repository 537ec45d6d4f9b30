"""A user who is not root gets a work dir of their own by default, as podman keeps a
user's storage in their data home: root's ``/var/lib/lazyfs`` was everyone's default, and
every command of a user failed on it until they named one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import REPO, one_line_error
from tests.support.nobody import as_nobody, nobodys_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def nobodys(image_dir: Path) -> Iterator[Path]:
    with nobodys_dir(image_dir, "lazyfs-user-work-") as base:
        yield base


def test_a_users_default_work_dir_is_in_their_data_home(nobodys: Path) -> None:
    listed = as_nobody(nobodys, "images", "--json", work_dir=False)
    assert listed.returncode == 0, listed.stderr  # before: "would be made in /var/lib"
    assert json.loads(listed.stdout) == []
    pulled = as_nobody(nobodys, "pull", "busybox", work_dir=False)
    assert pulled.returncode == 0, pulled.stderr
    work = nobodys / "home" / ".local" / "share" / "lazyfs"
    assert list(work.glob("store/docker/blobs/*/*"))
    listed = as_nobody(nobodys, "images", "--json", work_dir=False)
    assert [image["reference"] for image in json.loads(listed.stdout)] == [
        "docker.io/library/busybox:latest"
    ]


def test_a_user_without_a_home_is_told_to_name_a_work_dir(tmp_path: Path) -> None:
    # HOME unset and no passwd row (a uid of CI or Kubernetes): "~" stayed as it was,
    # and a work dir "./~/.local/share/lazyfs" was made in the current directory.
    os.chmod(tmp_path, 0o777)
    result = subprocess.run(
        [sys.executable, "-m", "lazyfs", "images"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, user=54321, group=54321,
        extra_groups=[], stdin=subprocess.DEVNULL, env={"PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    line = one_line_error(result)
    assert line.startswith("lazyfs: --work_dir /var/lib/lazyfs: "), line  # root's, refused
    assert line.endswith("use a directory of your own (--work_dir)"), line
    assert list(tmp_path.iterdir()) == []
