"""Whether a long-lived process's directory is still there (``lazyfs.cache.pinned_dir``):
never gone while its path leads to it, however the path was written; gone once removed,
moved away or replaced."""

from __future__ import annotations

import os
from pathlib import Path

from lazyfs.cache.pinned_dir import PinnedDir


def test_a_path_through_a_symlink_and_dot_dot_is_the_directory_it_led_to(
    tmp_path: Path,
) -> None:
    # link/.. is the link target's parent, not tmp_path: tidied as text (abspath), the
    # path named a directory that did not exist, and the daemon and the mount server
    # took their own directory for gone two seconds after they started.
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "w").mkdir()
    (tmp_path / "link").symlink_to("a/b")
    home = PinnedDir.opened(f"{tmp_path}/link/../w")
    try:
        assert home.gone() is None
        os.rmdir(tmp_path / "a" / "w")
        assert home.gone() is not None
    finally:
        os.close(home.fd)


def test_a_relative_path_is_pinned_from_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        home = PinnedDir.opened("d")
    finally:
        os.chdir(here)
    try:
        assert home.path == str(tmp_path / "d") and home.gone() is None
    finally:
        os.close(home.fd)


def test_a_directory_moved_away_or_replaced_is_gone(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    home = PinnedDir.opened(tmp_path / "d")
    try:
        os.rename(tmp_path / "d", tmp_path / "moved")
        assert home.gone() == f"{tmp_path / 'd'} is gone"
        (tmp_path / "d").mkdir()
        gone = home.gone()
        assert gone is not None and gone.startswith(str(tmp_path / "d"))
    finally:
        os.close(home.fd)
