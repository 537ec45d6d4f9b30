"""private_dir: directories closed to other users whatever the umask, old ones closed again."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.errors import UsageError
from providers.private_dir import private_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0, as a service manager may leave it: nothing may count on 022."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_directory_and_its_missing_parents_are_private(
    tmp_path: Path, open_umask: None
) -> None:
    made = private_dir(tmp_path / "a" / "b" / "c")
    assert made == tmp_path / "a" / "b" / "c"
    assert [mode(p) for p in (made.parents[1], made.parent, made)] == [0o700] * 3


@pytest.mark.parametrize("wanted", [0o700, 0o711])
def test_an_open_directory_gets_the_mode_asked_for(
    tmp_path: Path, open_umask: None, wanted: int
) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o777)
    (old / "kept").write_text("x")
    private_dir(old, wanted)
    assert mode(old) == wanted
    assert (old / "kept").read_text() == "x"


def test_exist_ok_false_refuses_a_directory_that_is_there(tmp_path: Path) -> None:
    private_dir(tmp_path / "d", exist_ok=False)
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "d", exist_ok=False)


def test_a_file_in_the_way_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"f is not a directory$"):
        private_dir(tmp_path / "f")


def test_a_directory_of_another_user_is_refused_and_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UsageError, match="owned by uid 65534"):
        private_dir(theirs)
    assert mode(theirs) == 0o755
