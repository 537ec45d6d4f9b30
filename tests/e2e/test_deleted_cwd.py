"""A relative path given from a current directory that was deleted is named in
the error, with the reason: the directory is gone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.lazyfs_cli import REPO, Lazyfs, one_line_error

GONE = "a relative path, but the current directory is gone (deleted)"


def from_deleted_dir(tmp_path: Path, lazyfs: Lazyfs, *args: str) -> str:
    """The one-line error of ``lazyfs ARGS`` run in a directory deleted under it."""
    gone = tmp_path / "gone"
    gone.mkdir()
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    argv = ["sh", "-c", script, "sh", str(gone), *lazyfs.argv(*args)]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)
    return one_line_error(result)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("pull", "docker-archive:./img.tar"), "docker-archive:./img.tar"),
        (("provision", "c1", "oci:./layout"), "oci:./layout"),
        (("--work_dir", "rel", "images"), "--work_dir rel"),
        (("--docker_store_dir", "st", "images"), "--docker_store_dir st"),
    ],
    ids=["pull", "provision", "work dir", "store dir"],
)
def test_the_relative_path_is_named(
    lazyfs: Lazyfs, tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    error = from_deleted_dir(tmp_path, lazyfs, *args)
    assert error.startswith(f"lazyfs: {named}: {GONE}"), error
