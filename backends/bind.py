"""The bind backend: a one-layer image, extracted once, bind-mounted read-only.

As in Mesos, it copies nothing per container and so cannot union layers: an
image of more than one layer is refused. The extracted layer lives in the
store (``layers/<hex>/rootfs``) and is shared by every container using it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from backends.apply import apply_layers
from backends.base import LayerFile, Rootfs
from backends.mounts import bind_mount, unmount, unmount_all_under
from providers.digest import hex_part
from providers.errors import BackendError


class BindBackend:
    name = "bind"

    def __init__(self, layers_dir: Path, tmp_dir: Path) -> None:
        self.layers_dir = layers_dir
        # Scratch space on the same filesystem, named by pid, so the store's
        # clean-up finds what a crashed extraction left.
        self.tmp_dir = tmp_dir

    def provision(self, layers: Sequence[LayerFile], rootfs: Path, *, writable: bool) -> Rootfs:
        if len(layers) != 1:
            raise BackendError(
                f"the bind backend needs an image of exactly one layer, this one has {len(layers)}"
            )
        # Read-only whatever was asked, as in Mesos: writes need volumes.
        source = self.extracted(layers[0])
        rootfs.mkdir(mode=0o755)
        bind_mount(source, rootfs, readonly=True)
        return Rootfs(rootfs, self.name, writable=False)

    def destroy(self, rootfs: Path) -> None:
        if not rootfs.exists():
            return
        unmount_all_under(rootfs)
        unmount(rootfs)
        rootfs.rmdir()

    def extracted(self, layer: LayerFile) -> Path:
        """The layer's tree under the store, extracted once, atomically."""
        home = self.layers_dir / hex_part(layer.digest)
        target = home / "rootfs"
        if target.is_dir():
            return target
        home.mkdir(parents=True, exist_ok=True)
        with _locked(home / "lock"):
            if target.is_dir():
                return target
            scratch = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix=f"{os.getpid()}."))
            try:
                tree = scratch / "rootfs"
                tree.mkdir(mode=0o755)
                apply_layers(tree, [layer])
                os.rename(tree, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return target


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
