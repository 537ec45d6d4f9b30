"""Per-layer directories for kernel overlayfs and fuse-overlayfs, built from the layer tars.

Each layer is extracted on its own with GNU tar, as a container engine's
overlay driver keeps it, then its OCI whiteouts are turned into what overlayfs
understands: ``.wh.NAME`` becomes a 0/0 character device NAME, and
``.wh..wh..opq`` becomes the ``trusted.overlay.opaque=y`` xattr on its
directory. Built once per image and kept in the cache.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from benchlib.images import BenchImage, image_layers
from benchlib.util import run

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def lower_dirs(cache: Path, image: BenchImage) -> list[Path]:
    """The image's layers as overlayfs lower directories, bottom first."""
    root = cache / "lowers" / image.name
    # Keyed by the layers, so a rebuilt image gets new lower directories.
    done = root / ".done"
    layers = image_layers(image)
    dirs = [root / str(i) for i in range(len(layers))]
    key = "\n".join(layer.name for layer in layers) + "\n"
    if done.exists() and done.read_text() == key:
        return dirs
    shutil.rmtree(root, ignore_errors=True)
    for layer, target in zip(layers, dirs, strict=True):
        target.mkdir(parents=True)
        run(
            [
                "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                "-xpf", layer, "-C", target,
            ]
        )  # fmt: skip
        convert_whiteouts(target)
    done.write_text(key)
    return dirs


def convert_whiteouts(layer_dir: Path) -> None:
    """Turn OCI whiteout files under ``layer_dir`` into overlayfs whiteouts, in place."""
    for dirpath, _dirs, names in os.walk(layer_dir):
        for name in names:
            if not name.startswith(WHITEOUT):
                continue
            path = os.path.join(dirpath, name)
            os.unlink(path)
            if name == OPAQUE:
                os.setxattr(dirpath, "trusted.overlay.opaque", b"y")
            else:
                os.mknod(
                    os.path.join(dirpath, name[len(WHITEOUT) :]), stat.S_IFCHR, os.makedev(0, 0)
                )
