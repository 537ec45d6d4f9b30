"""A user other than root applies a layer that writes into lower read-only directories and
has a header for a directory that is not the user's (root's, in the tree the user was given):
the kernel refuses its mode (EPERM) as the layer ends, and the layer fails in one line; the
lower directories the walk opened to their owner have their modes back all the same.
Before, a mode refused there left them open (0755, 0700).

The layer is applied as user 65534 on a tree root made; the test needs root to make it
and to switch to that user, and fails without it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import Entry, write_layer
from tests.support.lazyfs_cli import REPO
from tests.support.nobody import NOBODY, searchable_dir

pytestmark = pytest.mark.integration

# Applies the layers (copy's way) on the tree given; prints the error, or null.
_CHILD = """
import json, sys
from pathlib import Path
from backends.apply import LayerFile, apply_layers
from providers.errors import LazyfsError
root, *tars = sys.argv[1:]
files = [LayerFile(f"sha256:{n:064x}", Path(tar)) for n, tar in enumerate(tars)]
try:
    apply_layers(Path(root), files)
    print(json.dumps(None))
except LazyfsError as error:
    print(json.dumps(str(error)))
"""

LAYERS = [
    [Entry("d", "dir", mode=0o555), Entry("d/a", data=b"a\n"), Entry("z", "dir", mode=0)],
    # Deepest first: root's m/n is refused before d and z are given their modes back.
    [Entry("d/b", data=b"b\n"), Entry("z/c", data=b"c\n"), Entry("m/n", "dir", mode=0o700)],
]


@pytest.fixture
def base() -> Iterator[Path]:
    with searchable_dir("lazyfs-dir-mode-refused-") as made:
        yield made


def test_a_refused_header_mode_leaves_no_lower_dir_opened_to_its_owner(base: Path) -> None:
    tars = [str(write_layer(layer, base / f"{n}.tar")) for n, layer in enumerate(LAYERS)]
    root = base / "rootfs"
    (root / "m" / "n").mkdir(mode=0o755, parents=True)
    os.chmod(root, 0o755)
    os.chmod(root / "m", 0o755)
    os.chown(root, NOBODY, NOBODY)
    os.chown(root / "m", NOBODY, NOBODY)  # m/n stays root's: its mode is refused to the user
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), *tars], capture_output=True, text=True,
        timeout=120, cwd=REPO, user=NOBODY, group=NOBODY, extra_groups=[],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == (
        f"layer sha256:{1:064x}: entry 'm/n': Operation not permitted"
    )
    found = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        found[str(path.relative_to(root))] = (stat.filemode(info.st_mode), info.st_uid)
    assert found == {
        ".": ("drwxr-xr-x", NOBODY),
        "d": ("dr-xr-xr-x", NOBODY),  # before: drwxr-xr-x
        "d/a": ("-rw-r--r--", NOBODY),
        "d/b": ("-rw-r--r--", NOBODY),
        "m": ("drwxr-xr-x", NOBODY),
        "m/n": ("drwxr-xr-x", 0),
        "z": ("d---------", NOBODY),  # before: drwx------
        "z/c": ("-rw-r--r--", NOBODY),
    }
