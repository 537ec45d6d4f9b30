"""Which directories an overlay of separately extracted layers must correct.

Layers are extracted with ``whiteouts="overlay"`` into sibling directories,
as the store holds them, and ``plan_top_dirs`` is asked about the stack; no
mount is needed.  The store's record of a layer (``made_dirs``) says whether
it had a root header.  Whiteouts need root, so the module does.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from backends.apply import LayerFile, apply_layer
from backends.extracted import extracted_layer, made_dirs
from backends.overlay_dirs import DirAttrs, LowerDir, plan_top_dirs, write_top_dirs
from providers.digest import digest_bytes
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


ROOT_CASES = {
    # Only the bottom layer has "./": the top one's extraction made its own root.
    "bottom": (
        [dir_("./", mode=0o1777, uid=1000, gid=1000, mtime=1000), reg("f")],
        [reg("g")],
    ),
    # Two headers below the top: the higher one is the union's.
    "middle": (
        [dir_("./", mode=0o700, uid=5, gid=6, mtime=1000), reg("f")],
        [dir_("./", mode=0o2775, uid=1000, gid=1001, mtime=2000, pax_headers=xattrs(user_r=b"1"))],
        [reg("g")],
    ),
    "top": (
        [dir_("./", mode=0o700, uid=5, gid=6, mtime=1000), reg("f")],
        [reg("g")],
        [dir_("./", mode=0o2775, uid=1000, gid=1001, mtime=2000, pax_headers=xattrs(user_r=b"1"))],
    ),
    # An opaque root hides the lower children, not the lower root's attributes.
    "under-an-opaque-root": (
        [dir_("./", mode=0o2775, uid=1000, gid=1001, mtime=2000, pax_headers=xattrs(user_r=b"1"))],
        [reg(".wh..wh..opq"), reg("g")],
    ),
}


@pytest.mark.parametrize("case", ROOT_CASES)
def test_the_root_takes_the_topmost_root_header(tmp_path: Path, case: str) -> None:
    lowers = stack(tmp_path, *ROOT_CASES[case])
    top = tmp_path / "top"
    top.mkdir()
    write_top_dirs(top, plan_top_dirs(lowers))
    info = top.stat()
    found = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, info.st_mtime_ns)
    if case == "bottom":
        assert found == (0o1777, 1000, 1000, 1000 * 10**9)
        assert os.listxattr(top) == []
    else:
        # Mode after owner: chown clears setgid.
        assert found == (0o2775, 1000, 1001, 2000 * 10**9)
        assert os.getxattr(top, "user.r") == b"1"


def test_without_any_root_header_the_root_is_the_top_layers_own(tmp_path: Path) -> None:
    lowers = stack(tmp_path, [reg("f")], [reg("g")])
    os.utime(lowers[-1].path, ns=(5, 5))  # told apart from the lower one's
    assert planned(lowers)[()] == _from_path(lowers[-1].path)


def test_a_layer_extracted_before_root_headers_were_recorded_keeps_its_root(
    tmp_path: Path,
) -> None:
    lowers = stack(
        tmp_path,
        [dir_("./", mode=0o1777, uid=1000, gid=1000, mtime=1000), reg("f")],
        [dir_("./", mode=0o750, uid=3, gid=4, mtime=3000), reg("g")],
        [reg("h")],
    )
    # As an older lazyfs left it: no record of a root header either way.
    old = LowerDir(lowers[1].path, replace(lowers[1].made, root_header=None))
    root = planned([lowers[0], old, lowers[2]])[()]
    assert (root.mode, root.uid, root.gid, root.mtime_ns) == (0o750, 3, 4, 3000 * 10**9)


def _from_path(path: Path) -> DirAttrs:
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    return DirAttrs((), mode, info.st_uid, info.st_gid, info.st_mtime_ns, ())


@pytest.mark.parametrize("header", [True, False])
def test_the_store_records_whether_a_layer_had_a_root_header(tmp_path: Path, header: bool) -> None:
    members = [dir_("./", mode=0o1777), reg("f")] if header else [reg("f")]
    blob = tmp_path / "layer.tar"
    blob.write_bytes(layer(*members).getvalue())
    (tmp_path / "tmp").mkdir()
    layer_file = LayerFile(digest_bytes(blob.read_bytes()), blob)
    tree = extracted_layer(tmp_path / "layers", tmp_path / "tmp", layer_file, "overlay")
    assert made_dirs(tree).root_header is header
    sidecar = tree.with_name(tree.name + ".dirs.json")
    record = json.loads(sidecar.read_text())
    del record["root_header"]  # as an older lazyfs wrote it
    sidecar.write_text(json.dumps(record))
    assert made_dirs(tree).root_header is None
    sidecar.write_text(json.dumps({**record, "root_header": "yes"}))
    with pytest.raises(BackendError, match="no readable"):
        made_dirs(tree)
