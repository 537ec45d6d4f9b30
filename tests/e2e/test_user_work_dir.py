"""A user who is not root gets a work dir of their own by default, as podman keeps a
user's storage in their data home: root's ``/var/lib/lazyfs`` was everyone's default, and
every command of a user failed on it until they named one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

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
