"""Fixtures that drive the real ``lazyfs`` command against a sample image."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under
from providers.fstree import remove_tree
from tests import images

REPO = Path(__file__).resolve().parents[2]


DEEP = 1100  # levels of the deep image: past Python's recursion limit (1000)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local image directory holding, as ``docker save`` tarballs:

    - busybox:latest, built from the host's busybox (two layers);
    - deep:latest, one layer of DEEP nested directories ``d/d/...`` with a file ``f``
      at the bottom;
    - empty:latest, an image of no layer at all;
    - one:latest, one layer with /etc/motd, for the bind backend.
    """
    directory = tmp_path_factory.mktemp("images")
    subprocess.run(
        [REPO / "scripts" / "sample-image", directory, "busybox:latest"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    work = tmp_path_factory.mktemp("odd-images")
    path = ""
    entries = []
    for _ in range(DEEP):
        path = f"{path}/d" if path else "d"
        entries.append(images.Entry(path, "dir", mode=0o755))
    entries.append(images.Entry(f"{path}/f", data=b"bottom\n"))
    config = images.ImageConfig(cmd=("/bin/sh",))
    one = [images.Entry("etc", "dir", mode=0o755), images.Entry("etc/motd", data=b"one layer\n")]
    for name, layers in (("deep", [entries]), ("empty", []), ("one", [one])):
        layout = images.build_oci_image(work / name, layers, "latest", config)
        images.to_docker_archive(layout, "latest", directory / f"{name}:latest.tar", name)
    return directory


@dataclass
class Lazyfs:
    work_dir: Path
    image_dir: Path

    def argv(self, *args: str) -> list[str]:
        """The ``lazyfs`` command line for ``args``, on this work dir and image dir."""
        return [
            sys.executable,
            "-m",
            "lazyfs",
            "--work_dir",
            str(self.work_dir),
            "--docker_registry",
            str(self.image_dir),
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def lazyfs(tmp_path: Path, image_dir: Path) -> Iterator[Lazyfs]:
    work = tmp_path / "work"
    yield Lazyfs(work, image_dir)
    # Containers a failing test left to runc go first: they use what follows.
    delete_runc_containers(work / "runc")
    # Whatever a failing test left mounted goes, so the next test starts clean.
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)
    # And what it left on disk: pytest's own clean-up cannot remove a deep tree.
    remove_tree(work)


def delete_runc_containers(state_root: Path) -> None:
    """Kill and delete every container runc has under ``state_root``."""
    if not state_root.is_dir():
        return
    for cid in os.listdir(state_root):
        subprocess.run(
            ["runc", "--root", state_root, "delete", "--force", cid],
            capture_output=True,
            check=False,
        )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed; asserts it is one line and no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("lazyfs: ")
    return lines[0]
