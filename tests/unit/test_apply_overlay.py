"""Extracting one layer in overlayfs' lower form (``whiteouts="overlay"``).

Whiteouts become 0/0 character devices and opaque markers an xattr; nothing
is removed; the layer's own entries win over its whiteouts; overlayfs' own
xattrs cannot come from an image; every hostile layer is still refused.
Whiteouts and trusted.* xattrs need root, so the whole module does.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from backends.apply import apply_layer
from backends.apply_tree import OVERLAY_OPAQUE, MadeDirs
from providers.errors import BackendError, BadImage, UnsafeLayer
from providers.layer_rules import RelPath
from tests.support.hostile_layers import HOSTILE, PROBE, Hostile, outside_state
from tests.support.tar_members import Member, dir_, hard, layer, reg, sym, tar_info, xattrs
from tests.support.tree import is_whiteout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    return tmp_path / "root"


def extract(root: Path, *members: Member) -> frozenset[RelPath]:
    """Extract one layer; the directories it made without a header."""
    return extract_made(root, *members).implicit


def extract_made(root: Path, *members: Member) -> MadeDirs:
    stream: io.BytesIO = layer(*members)
    return apply_layer(root, stream, layer="layer0", whiteouts="overlay")


def is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE) == b"y"
    except OSError:
        return False


def test_whiteout_becomes_a_0_0_character_device(root: Path) -> None:
    extract(root, dir_("etc"), reg("etc/.wh.passwd"), reg(".wh.top"))
    assert is_whiteout(root / "etc" / "passwd") and is_whiteout(root / "top")
    assert sorted(os.listdir(root)) == ["etc", "top"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_marker_sets_the_xattr_and_keeps_the_header(root: Path, marker_first: bool) -> None:
    members = [dir_("d", mode=0o750, pax_headers=xattrs(user_k=b"v")), reg("d/own", b"x")]
    marker = reg("d/.wh..wh..opq")
    extract(root, *([marker, *members] if marker_first else [*members, marker]))
    assert is_opaque(root / "d")
    assert os.getxattr(root / "d", "user.k") == b"v"
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750
    assert os.listdir(root / "d") == ["own"]


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_and_directory_of_one_layer_make_an_opaque_directory(
    root: Path, whiteout_first: bool
) -> None:
    members = [dir_("d"), reg("d/own", b"x")]
    whiteout = reg(".wh.d")
    extract(root, *([whiteout, *members] if whiteout_first else [*members, whiteout]))
    assert (root / "d").is_dir() and is_opaque(root / "d")
    assert os.listdir(root / "d") == ["own"]


def test_whiteout_then_a_child_makes_an_opaque_implicit_directory(root: Path) -> None:
    implicit = extract(root, reg(".wh.d"), reg("d/own", b"x"))
    assert is_opaque(root / "d") and os.listdir(root / "d") == ["own"]
    assert implicit == frozenset()  # made fresh: no lower attributes to take


def test_own_file_wins_over_its_whiteout(root: Path) -> None:
    extract(root, reg(".wh.f"), reg("f", b"mine"))
    assert (root / "f").read_bytes() == b"mine"
    extract(root, reg("g", b"mine"), reg(".wh.g"))
    assert (root / "g").read_bytes() == b"mine"


def test_directories_without_headers_are_reported(root: Path) -> None:
    assert extract(root, reg("a/b/f")) == {("a",), ("a", "b")}
    assert extract(root, dir_("x"), reg("x/y/f")) == {("x", "y")}


def test_overlay_xattrs_from_the_image_are_dropped(root: Path) -> None:
    forged = {
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.fine": "1",
    }
    extract(root, dir_("d", pax_headers=forged), reg("f", pax_headers=forged))
    for path in (root / "d", root / "f"):
        assert os.listxattr(path) == ["user.fine"]


def test_a_real_0_0_character_device_is_refused(root: Path) -> None:
    device = tar_info("dev/zero0", b"3", devmajor=0, devminor=0), b""
    with pytest.raises(BadImage, match="0/0 character device"):
        extract(root, dir_("dev"), device)


def test_a_hardlink_to_another_layer_is_refused_clearly(root: Path) -> None:
    with pytest.raises(BackendError, match="not in its own layer"):
        extract(root, hard("mine", "lower/file"))


@pytest.mark.parametrize("case", HOSTILE, ids=[case.id for case in HOSTILE])
def test_hostile_layers_are_still_refused(root: Path, tmp_path: Path, case: Hostile) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("secret")
    before = outside_state(tmp_path)
    with pytest.raises(UnsafeLayer):
        extract(root, *case.members)
    assert outside_state(tmp_path) == before
    for place in (Path("/"), Path("/tmp"), tmp_path.parent, Path.cwd()):
        assert not (place / PROBE).exists()


@pytest.mark.parametrize("first", [reg("d"), sym("d", "elsewhere")], ids=["file", "symlink"])
def test_a_directory_over_the_layers_own_non_directory_is_opaque(root: Path, first: Member) -> None:
    # The layer's own "d" hid a lower d; its directory d must go on hiding it.
    extract(root, first, dir_("d"), reg("d/mine"))
    assert is_opaque(root / "d")
    assert os.listdir(root / "d") == ["mine"]


def test_the_layers_own_file_over_its_whiteout_is_no_whiteout(tmp_path: Path) -> None:
    # ".wh.a", then a file "a": neither an entry beneath it nor a link to it
    # may take the file for the whiteout it replaced.
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    with pytest.raises(BadImage, match="needs 'a' as a directory"):
        extract(tmp_path / "one", reg(".wh.a"), reg("a", b"mine"), reg("a/under"))
    extract(tmp_path / "two", reg(".wh.b"), reg("b", b"mine"), hard("c", "b"))
    assert (tmp_path / "two" / "c").read_bytes() == b"mine"
