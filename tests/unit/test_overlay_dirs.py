"""Which directories an overlay of separately extracted layers must correct.

Layers are extracted with ``whiteouts="overlay"`` into sibling directories,
as the store holds them, and ``plan_top_dirs`` is asked about the stack; no
mount is needed.  Whiteouts need root, so the module does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from backends.apply import apply_layer
from backends.overlay_dirs import DirAttrs, LowerDir, plan_top_dirs, write_top_dirs
from providers.errors import BackendError
from tests.support.tar_members import Member, dir_, layer, reg, sym, xattrs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def stack(tmp_path: Path, *layers: list[Member]) -> list[LowerDir]:
    lowers = []
    for index, members in enumerate(layers):
        root = tmp_path / f"l{index}" / "overlay"
        root.mkdir(parents=True)
        made = apply_layer(root, layer(*members), layer=f"l{index}", whiteouts="overlay")
        lowers.append(LowerDir(root, made))
    return lowers


def planned(lowers: list[LowerDir]) -> dict[tuple[str, ...], DirAttrs]:
    return {attrs.path: attrs for attrs in plan_top_dirs(lowers).dirs}


def test_a_directory_without_header_takes_the_lower_attributes(tmp_path: Path) -> None:
    lowers = stack(
        tmp_path,
        [dir_("etc", mode=0o750, uid=4, mtime=1000, pax_headers=xattrs(user_k=b"v"))],
        [reg("etc/passwd", b"x")],
    )
    plan = planned(lowers)
    assert set(plan) == {(), ("etc",)}
    etc = plan[("etc",)]
    assert (etc.mode, etc.uid, etc.mtime_ns, etc.xattrs) == (
        0o750,
        4,
        1000 * 10**9,
        (("user.k", b"v"),),
    )


def test_ancestors_come_along_with_their_own_union_attributes(tmp_path: Path) -> None:
    lowers = stack(
        tmp_path,
        [dir_("a", mode=0o700, mtime=1), dir_("a/b", mode=0o711, mtime=2)],
        [dir_("a", mode=0o705, mtime=3)],
        [reg("a/b/f")],
    )
    plan = planned(lowers)
    assert [plan[p].mode for p in (("a",), ("a", "b"))] == [0o705, 0o711]
    top = tmp_path / "top"
    top.mkdir()
    write_top_dirs(top, plan_top_dirs(lowers))
    assert stat.S_IMODE((top / "a").stat().st_mode) == 0o705
    assert (top / "a" / "b").stat().st_mtime_ns == 2 * 10**9


def test_explicit_directories_and_fresh_ones_need_nothing(tmp_path: Path) -> None:
    lowers = stack(
        tmp_path,
        [dir_("a", mode=0o700), dir_("b", mode=0o700), reg("b/old")],
        [dir_("a", mode=0o755), reg("a/f"), reg(".wh.b"), reg("b/new")],
    )
    assert set(planned(lowers)) == {()}


def test_an_opaque_parent_hides_the_lower_namesake(tmp_path: Path) -> None:
    lowers = stack(
        tmp_path,
        [dir_("p"), dir_("p/q", mode=0o700)],
        [dir_("p"), reg("p/.wh..wh..opq"), reg("p/q/f")],
    )
    assert set(planned(lowers)) == {()}


def test_writing_through_a_lower_symlink_is_refused(tmp_path: Path) -> None:
    lowers = stack(tmp_path, [dir_("usr/lib"), sym("lib", "usr/lib")], [reg("lib/x")])
    with pytest.raises(BackendError, match="'lib'"):
        plan_top_dirs(lowers)
