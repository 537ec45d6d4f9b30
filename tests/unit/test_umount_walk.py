"""``lazyfs umount`` follows the symlinks on the way to a mount point one name at a time
(``lazyfs.provision.devmount._walk``), so that a look stuck on a stopped mount is known by
where it is: it must land where ``os.path.realpath`` does, and name each step first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lazyfs.provision.devmount import _walk

LINKS = {
    "rel": "a/b",  # relative
    "abs": "{root}/a/b",  # absolute
    "double": "/{root}/a/b",  # "//" before it: POSIX leaves it to the system, Linux reads "/"
    "slashes": "{root}//a///b/",  # repeated and trailing slashes
    "dots": "./a/./b/.",
    "up": "a/b/../b",  # ".." after a name
    "chain": "rel",  # a link to a link
    "top": "/",
    "dangling": "nowhere/at/all",
    "loop": "loop",
}


@pytest.mark.parametrize("name", sorted(LINKS))
@pytest.mark.parametrize("rest", ["", "x", "x/y", "../c"])
def test_a_walk_lands_where_realpath_does(tmp_path: Path, name: str, rest: str) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "up").symlink_to("../../a")  # ".." out of where it points
    for link, target in LINKS.items():
        (tmp_path / link).symlink_to(target.format(root=tmp_path))
    # As umount gives it: absolute, its own ".." taken as written (as realpath takes them).
    path = Path(os.path.abspath(tmp_path / name / rest if rest else tmp_path / name))
    at: list[Path] = []
    assert _walk(path, at) == Path(os.path.realpath(path))
    assert at and at[0] == Path(path.parts[0]) / path.parts[1]  # each name, from the top
