"""Fixtures that drive the real ``lazyfs`` command against a sample image."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backends.mounts import mounts_under, unmount_all_under

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local image directory holding busybox:latest.tar, built from the host's busybox."""
    directory = tmp_path_factory.mktemp("images")
    subprocess.run(
        [REPO / "scripts" / "sample-image", directory, "busybox:latest"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
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
    # Whatever a failing test left mounted goes, so the next test starts clean.
    if mounts_under(tmp_path):
        unmount_all_under(tmp_path)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error a failed command printed; asserts it is one line and no traceback."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("lazyfs: ")
    return lines[0]
