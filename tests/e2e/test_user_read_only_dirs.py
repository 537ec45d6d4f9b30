"""A user other than root extracts layers that make a directory read-only and write into it
later: a later layer's file and whiteout in a lower 0555 or 0500 directory, an unreadable
(0000) one, a 0555 root, and one layer whose own 0000 directory comes before its children.
The user gets the tree root gets (but for owners), the directories with their modes, as
umoci does rootless: before, the copy backend failed (EACCES) where a lower layer's
directory keeps its owner from writing, and one layer alone failed giving times back
through its own 0000 directory.  A layer that fails half way leaves no directory more open
than it was.

The layers are applied as user 65534 for the copy backend, and extracted alone as bind
(``rootfs``) and overlay extract them; these tests need root to switch to that user, and
fail without it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.images import Entry, whiteout, write_layer
from tests.support.lazyfs_cli import REPO
from tests.support.nobody import NOBODY, searchable_dir

pytestmark = pytest.mark.integration

CASES: dict[str, list[list[Entry]]] = {
    "file-into-lower-0555": [
        [Entry("usr", "dir", mode=0o755), Entry("usr/lib", "dir", mode=0o555),
         Entry("usr/lib/a", data=b"a\n")],
        [Entry("usr/lib/b", data=b"b\n"), Entry("usr/lib/c", "dir", mode=0o755),
         Entry("usr/lib/c/d", data=b"d\n")],
    ],
    "whiteout-in-lower-0555": [
        [Entry("d", "dir", mode=0o555), Entry("d/a", data=b"a\n"), Entry("d/gone", data=b"x"),
         Entry("d/sub", "dir", mode=0o555), Entry("d/sub/f", data=b"f")],
        [whiteout("d/gone"), whiteout("d/sub"), Entry("d/b", data=b"b\n")],
    ],
    "lower-0500-and-0000": [
        [Entry("d", "dir", mode=0o500), Entry("d/a", data=b"a\n"), Entry("z", "dir", mode=0),
         Entry("z/s", "dir", mode=0o700)],
        [Entry("d/b", data=b"b\n"), Entry("z/s/f", data=b"f\n")],
    ],
    "header-again-0555": [
        [Entry("d", "dir", mode=0o555), Entry("d/a", data=b"a\n")],
        [Entry("d", "dir", mode=0o555, xattrs={"user.k": b"v"}), Entry("d/b", data=b"b\n")],
    ],
    "root-0555": [
        [Entry("./", "dir", mode=0o555), Entry("a", data=b"a\n")],
        [Entry("b", data=b"b\n")],
    ],
    # Its own 0000 directory before the children; more directories after it than the
    # walk keeps open, so giving times back goes through it again.
    "one-layer-0000-first": [
        [Entry("z", "dir", mode=0), Entry("z/s/f", data=b"f\n"),
         *(Entry(f"o/{n}/p") for n in range(80))],
    ],
}  # fmt: skip

# What the child does: apply (copy) or extract alone (bind, overlay) the layers, as
# lazyfs does; prints the trees, or the error.
_CHILD = """
import json, sys
from pathlib import Path
from backends.apply import LayerFile, apply_layers
from backends.extracted import extracted_layer
from providers.errors import LazyfsError
form, out, *tars = sys.argv[1:]
out = Path(out)
files = [LayerFile(f"sha256:{n:064x}", Path(tar)) for n, tar in enumerate(tars)]
try:
    if form == "copy":
        (out / "rootfs").mkdir()
        apply_layers(out / "rootfs", files, rootless_owners=True)
        print(json.dumps([str(out / "rootfs")]))
    else:
        (out / "layers").mkdir()
        (out / "tmp").mkdir()
        trees = [extracted_layer(out / "layers", out / "tmp", file, form) for file in files]
        print(json.dumps([str(tree) for tree in trees]))
except LazyfsError as error:
    print(json.dumps(str(error)))
"""


def _extract(form: str, layers: Sequence[Sequence[Entry]], out: Path, *, user: int) -> object:
    """The trees (paths) or the error (a string) of ``layers`` in ``form``, made as ``user``."""
    out.mkdir(mode=0o755)
    tars = [str(write_layer(entries, out / f"{n}.tar")) for n, entries in enumerate(layers)]
    os.chown(out, user, user)
    made = subprocess.run(
        [sys.executable, "-c", _CHILD, form, str(out), *tars], capture_output=True, text=True,
        timeout=120, cwd=REPO, user=user, group=user, extra_groups=[],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return json.loads(made.stdout)


def _tree(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path below ``root`` (root included) with its type, mode and content."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        what: tuple[str, ...] = (stat.filemode(info.st_mode),)
        if stat.S_ISREG(info.st_mode):
            what += (path.read_text(),)
        found[str(path.relative_to(root))] = what
    return found


@pytest.fixture
def base() -> Iterator[Path]:
    with searchable_dir("lazyfs-read-only-dirs-") as made:
        yield made


# Whiteouts in overlayfs' form need root, and lazyfs says so: no user extracts those.
@pytest.mark.parametrize(
    ("case", "form"),
    [
        (case, form)
        for case in sorted(CASES)
        for form in ("copy", "rootfs", "overlay")
        if form != "overlay" or not case.startswith("whiteout")
    ],
)
def test_a_user_gets_roots_tree_with_read_only_dirs(base: Path, case: str, form: str) -> None:
    layers = CASES[case]
    theirs = _extract(form, layers, base / "root", user=0)
    ours = _extract(form, layers, base / "user", user=NOBODY)
    assert isinstance(theirs, list), theirs
    assert isinstance(ours, list), ours  # before: EACCES (copy), or a PermissionError
    assert [_tree(Path(tree)) for tree in ours] == [_tree(Path(tree)) for tree in theirs]


def test_a_users_copy_has_the_layers_files_in_a_lower_read_only_dir(base: Path) -> None:
    trees = _extract("copy", CASES["whiteout-in-lower-0555"], base / "user", user=NOBODY)
    assert isinstance(trees, list), trees
    assert _tree(Path(trees[0])) == {
        ".": ("drwxr-xr-x",),
        "d": ("dr-xr-xr-x",),
        "d/a": ("-rw-r--r--", "a\n"),
        "d/b": ("-rw-r--r--", "b\n"),
    }


def test_a_layer_failing_half_way_leaves_no_dir_opened_to_its_owner(base: Path) -> None:
    """The second layer writes into lower read-only directories, then is refused: what it
    wrote stays (the caller throws it away), the directories have their modes back."""
    layers = [
        [Entry("d", "dir", mode=0o555), Entry("d/e", "dir", mode=0o500), Entry("d/a")],
        [Entry("d/e/b", data=b"b\n"), Entry("d/bad", "hardlink", target="nowhere")],
    ]
    error = _extract("copy", layers, base / "user", user=NOBODY)
    assert isinstance(error, str) and "nowhere" in error, error
    assert _tree(base / "user" / "rootfs") == {
        ".": ("drwxr-xr-x",),
        "d": ("dr-xr-xr-x",),
        "d/a": ("-rw-r--r--", ""),
        "d/e": ("dr-x------",),
        "d/e/b": ("-rw-r--r--", "b\n"),
    }
