"""Root applies layers where no /proc is mounted (a bare chroot, a mount namespace without
it): the directories get their headers' modes and mtimes all the same.  Before, the walk set
them through ``/proc/self/fd/N`` of an ``O_PATH`` descriptor, and every layer with a
directory header failed (ENOENT).

The layers are applied in a child in a mount namespace of the test's own (``unshare``)
with /proc unmounted there; the test needs root, and fails without it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import BASE_MTIME_NS, Entry, write_layer
from tests.support.lazyfs_cli import REPO

pytestmark = pytest.mark.integration

# Applies the layers (copy's way) as root; prints whether /proc was there, and the error.
_CHILD = """
import json, os, sys
from pathlib import Path
from backends.apply import LayerFile, apply_layers
from providers.errors import LazyfsError
root, *tars = sys.argv[1:]
files = [LayerFile(f"sha256:{n:064x}", Path(tar)) for n, tar in enumerate(tars)]
try:
    apply_layers(Path(root), files)
    error = None
except LazyfsError as caught:
    error = str(caught)
print(json.dumps({"proc": os.path.exists("/proc/self/fd"), "error": error}))
"""

SECOND = 1_000_000_000
LAYERS = [
    [Entry("./", "dir", mode=0o751, mtime_ns=BASE_MTIME_NS),
     Entry("usr", "dir", mode=0o755, mtime_ns=BASE_MTIME_NS + 1 * SECOND),
     Entry("usr/lib", "dir", mode=0o555, mtime_ns=BASE_MTIME_NS + 2 * SECOND),
     Entry("usr/lib/a", data=b"a\n"),
     Entry("usr/lib/sub", "dir", mode=0o500, mtime_ns=BASE_MTIME_NS + 3 * SECOND),
     Entry("usr/lib/sub/f", data=b"f\n"),
     Entry("z", "dir", mode=0, mtime_ns=BASE_MTIME_NS + 4 * SECOND),
     Entry("z/s", "dir", mode=0o700, mtime_ns=BASE_MTIME_NS + 5 * SECOND)],
    # Into the lower 0555 directory, and a header again for it.
    [Entry("usr/lib", "dir", mode=0o1775, mtime_ns=BASE_MTIME_NS + 6 * SECOND),
     Entry("usr/lib/b", data=b"b\n"),
     Entry("z/s/g", data=b"g\n")],
]  # fmt: skip
EXPECTED = {
    ".": (0o751, BASE_MTIME_NS),
    "usr": (0o755, BASE_MTIME_NS + 1 * SECOND),
    "usr/lib": (0o1775, BASE_MTIME_NS + 6 * SECOND),
    "usr/lib/sub": (0o500, BASE_MTIME_NS + 3 * SECOND),
    "z": (0, BASE_MTIME_NS + 4 * SECOND),
    "z/s": (0o700, BASE_MTIME_NS + 5 * SECOND),
}


def test_root_applies_layers_with_directory_headers_without_proc(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "this test unmounts /proc in a mount namespace: it needs root"
    tars = [str(write_layer(layer, tmp_path / f"{n}.tar")) for n, layer in enumerate(LAYERS)]
    root = tmp_path / "rootfs"
    root.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'umount -l /proc && exec "$0" -c "$1" "$2" "$3" "$4"', sys.executable, _CHILD,
         str(root), *tars],
        capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Before: "layer sha256:00…0: entry 'usr/lib/sub': No such file or directory".
    assert json.loads(done.stdout) == {"proc": False, "error": None}
    found = {}
    for path in EXPECTED:
        info = (root / path).lstat()
        found[path] = (stat.S_IMODE(info.st_mode), info.st_mtime_ns)
    assert found == EXPECTED
    assert (root / "usr/lib/a").read_bytes() == b"a\n"
    assert (root / "usr/lib/b").read_bytes() == b"b\n"
    assert (root / "usr/lib/sub/f").read_bytes() == b"f\n"
    assert (root / "z/s/g").read_bytes() == b"g\n"
